import subprocess
import sys


def test_evaluation_and_its_command_line_load_no_torch():
    """Evaluation runs the station's runtime: importing it (and autoweld-eval) loads no torch."""
    code = (
        "import sys, autoweld.evaluation, autoweld.evaluation.metrics, "
        "autoweld.evaluation.evaluate, autoweld.cli.eval\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
