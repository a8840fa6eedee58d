"""fastdc.deepcluster.run_control: the stop flag puts back exactly the signal handlers it
found, and the progress bars draw today's one-line look on stderr only when enabled."""

import signal

import pytest

from fastdc.deepcluster.run_control import StopFlag, progress_bar


def _custom_handler(signum, frame):
    raise AssertionError("the stop flag's handler should have been called instead")


@pytest.mark.parametrize("found_int", [signal.SIG_IGN, signal.default_int_handler])
def test_stop_flag_restores_exactly_the_handlers_it_found(found_int):
    found = {signal.SIGINT: found_int, signal.SIGTERM: _custom_handler}
    before = {sig: signal.signal(sig, handler) for sig, handler in found.items()}
    try:
        flag = StopFlag()
        flag.install()
        assert all(signal.getsignal(sig) != handler for sig, handler in found.items())
        assert not flag
        signal.raise_signal(signal.SIGTERM)
        assert flag and flag.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts
            signal.raise_signal(signal.SIGINT)
        flag.uninstall()
        assert {sig: signal.getsignal(sig) for sig in found} == found
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_progress_bar_draws_on_stderr_only_when_enabled(capsys):
    with progress_bar("train", 4, True, initial=1) as bar:
        for _ in range(3):
            bar.update()
    out, err = capsys.readouterr()
    assert out == ""
    # drawn as soon as it opens: a quarter done, in ASCII, elapsed time and ETA
    assert err.startswith("\r  train      |" + "#" * 6 + "-" * 18 + "| 1/4    0.0s  eta ")
    assert err.endswith("\r")  # cleared when closed
    with progress_bar("features", 4, False) as bar:
        bar.update(4)
    assert capsys.readouterr() == ("", "")
