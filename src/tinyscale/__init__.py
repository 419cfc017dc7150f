"""tinyscale: a laboratory for the science of small language models."""

__version__ = "0.1.0"


def git_commit() -> str | None:
    """The commit of the code that is running (None outside a git checkout): with `__version__`,
    what run.json and the dataset cards record as the code's version."""
    import subprocess
    from pathlib import Path

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
