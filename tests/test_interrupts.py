"""The interrupt messages reach the terminal wherever the signal lands, in a subprocess."""
import subprocess
import sys
import textwrap

from tests.train_helpers import REPO, subprocess_env

# A second SIGTERM inside a checkpoint save, where file descriptor 2 is silenced. (It lost
# the message in a CI run: the process exited 143 with nothing said.)
SECOND_SIGNAL_DURING_A_SAVE = textwrap.dedent("""
    import os, signal, time
    from moe_jax.checkpoint import _quiet_stderr_on_failure
    from moe_jax.interrupts import Interrupts
    with Interrupts() as interrupts, interrupts.deferred():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.1)
      assert interrupts.requested
      with _quiet_stderr_on_failure():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    print("not reached")
""")


def test_a_second_signal_during_a_save_still_says_why_it_exits():
  proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL_DURING_A_SAVE], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 143, proc.stderr
  assert proc.stderr.splitlines()[-3:] == [
      "SIGTERM: finishing this step and saving a checkpoint (send it again to exit at once)",
      "",
      "SIGTERM again: exiting now; the newest complete checkpoint is kept"], proc.stderr
  assert "not reached" not in proc.stdout
