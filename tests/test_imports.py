"""Start-up cost: commands that don't touch S3 never import s3fs, botocore or aiohttp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import batchrun

HEAVY = ("s3fs", "botocore", "aiobotocore", "aiohttp", "boto3", "fsspec", "inspect_ai", "zstandard")


def modules_after(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines()[-1].split())  # the last line lists the modules


def test_cli_help_imports_no_storage_client() -> None:
    """Importing the CLI and rendering --help pulls in no storage library."""
    code = (
        "import sys\nfrom batchrun.cli import main\nsys.argv = ['batchrun', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint(' '.join(sys.modules))"
    )
    loaded = modules_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_local_run_and_status_import_no_storage_client(tmp_path: Path) -> None:
    """`run` and `status` on a local progress file work without fsspec, s3fs or botocore."""
    (tmp_path / "s.txt").write_text("a\n")
    code = (
        "import sys\nfrom batchrun.cli import main\n"
        f"sys.argv = ['batchrun', 'run', 'm', '{tmp_path}/s.txt', '--command', 'true',"
        f" '--progress', '{tmp_path}/p.txt']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        f"sys.argv = ['batchrun', 'status', '--progress', '{tmp_path}/p.txt', '--json']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "print(' '.join(sys.modules))"
    )
    loaded = modules_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_public_names_are_exactly_the_intended_ones() -> None:
    """The package exports its documented core and nothing by accident."""
    assert sorted(batchrun.__all__) == sorted(
        name
        for name in dir(batchrun)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(batchrun, name), type(batchrun))
    )


def test_command_line_starts_without_importing_rich() -> None:
    """`python -m batchrun --help` (as the console script) never imports rich: about 40 ms of start-up."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchrun", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "structlog.dev" in imported
    assert not {name for name in imported if name.startswith("rich.")}


def test_a_program_importing_batchrun_keeps_structlog_rich_tracebacks() -> None:
    """Only batchrun's own command line leaves rich out of structlog; a program that imports it does not."""
    loaded = modules_after("import batchrun, structlog.dev, sys\nprint(structlog.dev.rich is not None)")
    assert loaded == {"True"}
