from router.unavailable import Unavailable, parse_unavailable


def test_marker_survives_wrapping_in_other_error_text() -> None:
    err = Unavailable("no_worker", 2, "no routable worker after 3.0 s")
    wrapped = f'{{"error": "processor failed: {err}"}}'
    assert parse_unavailable(wrapped) == ("no_worker", 2)


def test_plain_errors_are_not_unavailable() -> None:
    assert parse_unavailable("worker 1f failed: ConnectionResetError()") is None
