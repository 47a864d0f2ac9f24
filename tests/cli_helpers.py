"""Running the click CLI in-process, shared by the CLI tests."""

from click.testing import CliRunner

from simkernel.cli import main


def run(args):
    try:
        runner = CliRunner(mix_stderr=False)          # click 8.1
    except TypeError:
        runner = CliRunner()                          # click >= 8.2 keeps stderr apart
    result = runner.invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(args):
    result = run(args)
    assert result.exit_code == 0, result.output + result.stderr
    return result
