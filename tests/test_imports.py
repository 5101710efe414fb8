"""Start-up cost: commands that don't touch S3 never import s3fs, botocore or aiohttp."""

from __future__ import annotations

import subprocess
import sys

import batchrun

HEAVY = ("s3fs", "botocore", "aiobotocore", "aiohttp", "boto3", "fsspec")


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_cli_help_imports_no_storage_client() -> None:
    """Importing the CLI and rendering --help pulls in no storage library."""
    code = (
        "import sys\nfrom batchrun.cli import app\n"
        "try:\n    app(['--help'], prog_name='batchrun')\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sys.modules), file=sys.stderr if False else sys.stdout)"
    )
    loaded = modules_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_local_status_imports_no_storage_client(tmp_path: object) -> None:
    """`status` on a local progress file works without fsspec or s3fs."""
    code = (
        "import sys\nfrom batchrun.cli import app\n"
        f"try:\n    app(['status', '--progress', '{tmp_path}/p.txt', '--json'], prog_name='batchrun')\n"
        "except SystemExit:\n    pass\nprint(' '.join(sys.modules))"
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
