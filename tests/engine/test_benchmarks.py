"""The CPU benchmarks run: each with its smallest arguments, checking only that it finished and printed its table
(their figures are ratios on a noisy machine; benchmarks/RESULTS.md holds them, no test asserts a time)."""

import sys


def table_rows(output: str) -> list[str]:
    """The markdown table's data rows (after the header and its |---| line)."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    return lines[2:] if len(lines) > 2 and lines[1].startswith("|---") else []


def test_latent_caching_benchmark_runs(capsys):
    from benchmarks import latent_caching

    latent_caching.main(["--smoke"])
    rows = table_rows(capsys.readouterr().out)
    assert [row.split("|")[1].strip() for row in rows] == [case.label for case in latent_caching.CASES]


def test_training_memory_benchmark_runs(capsys):
    from benchmarks import training_memory

    training_memory.main(["--smoke", "--device", "cpu"])       # its row runs in a child process
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0].startswith("| sd15-tiny | fp32 | off |")
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert all(float(cell.replace(",", "")) > 0 for cell in cells[4:])      # every part and ratio measured


def test_dataset_scan_benchmark_runs(capsys, monkeypatch):
    from benchmarks import dataset_scan

    monkeypatch.setattr(sys, "argv", ["dataset_scan", "--images", "20", "--rounds", "1"])
    dataset_scan.main()
    assert "ratio scan / decode" in capsys.readouterr().out


def test_plan_estimate_benchmark_runs(capsys):
    from benchmarks import plan_estimate

    plan_estimate.main(["--smoke"])
    rows = table_rows(capsys.readouterr().out)
    assert [row.split("|")[1].strip() for row in rows] == [case.label for case in plan_estimate.CASES]
    assert all(float(row.split("|")[5]) > 0 for row in rows)           # an estimate / measured ratio each
