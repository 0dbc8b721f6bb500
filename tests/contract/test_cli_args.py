"""Shared argument types: each range is checked at parse time with one line naming the option."""
import pytest

from wbc_edge.cli import args


@pytest.fixture
def parser():
    p = args.Parser("wbc-x")
    p.add_argument("--max-cells", type=args.COUNT)
    p.add_argument("--duration", type=args.SECONDS)
    p.add_argument("--max-drop", type=args.POINTS)
    return p


@pytest.mark.parametrize("argv, needle", [
    (["--max-cells", "0"], "argument --max-cells: 0 is not an integer >= 1"),
    (["--max-cells", "-3"], "argument --max-cells: -3 is not an integer >= 1"),
    (["--max-cells", "2.5"], "'2.5' is not an integer >= 1"),
    (["--duration", "0"], "0 is not a number > 0 (seconds)"),
    (["--duration", "nan"], "'nan' is not a number > 0"),
    (["--max-drop", "-1"], "-1 is not a number in 0..100 (weighted-F1 points)"),
    (["--max-drop", "101"], "101 is not a number in 0..100"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_out_of_range_is_one_line_and_exit_2(parser, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1, err
    assert err.startswith("wbc-x: ")


def test_in_range_values_parse(parser):
    a = parser.parse_args(["--max-cells", "1", "--duration", "0.5", "--max-drop", "0"])
    assert (a.max_cells, a.duration, a.max_drop) == (1, 0.5, 0.0)
    assert args.COUNT.help("stop after N cells") == "stop after N cells; an integer >= 1"
