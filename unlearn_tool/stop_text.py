"""How an iterative method's run ended, in one line ("target reached after 7 of 30 passes"), from its info and params.

Pure and torch-free: `unlearn apply` prints it, and the audit report shows it from the output's recorded run_info.
"""

from __future__ import annotations

from typing import Any, Optional


def run_info(info: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a method's info (stop reason, passes, kept check, ...), as recorded in the output's metadata;
    timings (`*_s`) are left out, so that a seeded CPU run still writes the same bytes."""
    import math

    return {k: v for k, v in info.items() if not k.endswith("_s")
            and (v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)))}


def stop_line(info: dict, params: dict) -> Optional[str]:
    """Why an iterative method stopped, in one line ("target reached after 7 of 30 passes")."""
    line = _reason_line(info, params)
    backoffs, drift, lr = info.get("lr_backoffs"), info.get("kept_check_drift"), info.get("kept_check_lr", params.get("lr"))
    if line and isinstance(drift, (int, float)) and drift > 1 and info.get("kept_check"):
        lower = f"--param lr={lr / 10:g}" if isinstance(lr, (int, float)) else "a lower --param lr"
        line += (f"; its retained outputs moved {drift:.1f} times as far as RFA's bound allows: {lower} may hold them "
                 "(docs/rfa.md R10)")
    if line and isinstance(backoffs, int) and backoffs:
        last = info.get("last_backoff_pass")
        if isinstance(last, int) and last == info.get("epochs_run") and info.get("stop_reason") == "epochs":
            earlier = backoffs - 1
            advice = "" if "more epochs" in line else ", more epochs may reach the target"  # said once (a kept check 0 says it)
            line += ("; the last pass overshot the forget target and was undone" +
                     (f" (the lr had been lowered tenfold {'once' if earlier == 1 else f'{earlier} times'} before)" if earlier else "") +
                     f": no pass was left to run at a lower lr{advice}")
        else:
            line += f"; a pass overshot the forget target, so the lr was lowered tenfold {'once' if backoffs == 1 else f'{backoffs} times'}"
    return line


def _reason_line(info: dict, params: dict) -> Optional[str]:
    reason, done = info.get("stop_reason"), info.get("epochs_run")
    if info.get("solver") == "gauss-newton":
        damping, read = info.get("damping"), info.get("dampings_read")
        if reason == "criterion":
            return f"one Gauss-Newton step: target reached at damping {damping:.3g} ({read} dampings read)"
        if damping is None:
            return ("one Gauss-Newton step: no damping came nearer to the stopping target than the original model: the output "
                    "equals the original (nothing forgotten); try solver adam")
        return f"one Gauss-Newton step: no damping met the stopping target; kept the one nearest to it ({damping:.3g})"
    total = params.get("epochs") or info.get("max_epochs")
    if reason is None or done is None:
        return None
    of = f" of {total}" if total else ""
    passes = "pass" if (total or done) == 1 else "passes"  # the noun agrees with the last number: "1 of 1 pass", "1 of 30 passes"
    ran = "ran its one pass" if done == 1 else f"ran all {done} passes"
    if reason == "criterion" and done == 0:
        why = (" (its forget-set error is at RFA's estimate of a model that never saw them: no generalisation gap shows)"
               if "target_forget_mae" in info else "")
        return f"the original already meets the stopping target{why}: no pass was run, the output equals the original"
    if reason == "criterion":
        return f"stopped early: target reached after {done}{of} {passes}"
    if reason == "plateau":
        agree = info.get("retain_agreement")
        at = f" at {100 * agree:.1f}%" if isinstance(agree, (int, float)) else ""
        return (f"stopped early after {done}{of} {passes}: forget target reached, retained agreement stopped "
                f"improving{at}; the best check's adapters were kept")
    if reason == "diverged":
        return f"stopped after {done}{of} {passes}: the loss diverged; the last finite weights were kept"
    kept = info.get("kept_check")
    if isinstance(kept, int) and kept != done:
        if kept == 0:
            return (f"{ran} without reaching the stopping target, and none came nearer to it than the original "
                    f"model: the output equals the original (nothing forgotten); try a lower lr or more epochs")
        return f"{ran} (the stopping target was not reached); kept the check nearest to it: pass {kept}'s adapters"
    return ran + (" (the stopping target was not reached)" if params.get("stop") == "criterion" else "")
