"""The chaos command line refuses bad options before it starts anything."""

from __future__ import annotations

import pytest

from toystore.faults.chaos import main


@pytest.mark.parametrize("argv", [["--snapshot-every", "-1"], ["--clients", "0"], ["--duration", "0"],
                                  ["--scenarios", "no-such-fault"]])
def test_a_bad_option_exits_2_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err
