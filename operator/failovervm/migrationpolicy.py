"""Migration policies (FailoverMigrationPolicy): which policy applies to a VM, the effective
settings of one migration, and the bounded-end rules the source agent applies while it runs.

Pure logic, no I/O: the controller hands in the policies (from its Kopf index) and the VM's
namespace labels; the agent hands in libvirt's job samples. See docs/migration-policies.md.

Precedence (after KubeVirt's MigrationPolicy): a policy matches a VM when its namespaceSelector
matches the VM's namespace labels and its vmSelector the VM's labels (an empty or absent selector
matches everything). Among the matching policies the most specific wins: the one whose selectors
have the most requirements (matchLabels entries plus matchExpressions terms, both selectors
together); on a tie, the one with more VM-selector requirements; then the first name in
alphabetical order. A per-migration `spec.bandwidthMiBps` on the FailoverVMMigration beats the
policy's bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

GIB = 1 << 30

# Built-in defaults: today's behaviour (no bandwidth cap, no auto-converge, no post-copy, one
# connection, QEMU's own downtime limit) except that a migration is bounded: it may take
# DEFAULT_COMPLETION_TIMEOUT_PER_GIB seconds per GiB of guest memory (at least one GiB counted),
# and fails when the data left to copy has not shrunk for DEFAULT_PROGRESS_TIMEOUT seconds.
# Both as KubeVirt's defaults.
DEFAULT_COMPLETION_TIMEOUT_PER_GIB = 150
DEFAULT_PROGRESS_TIMEOUT = 150

# Reasons a migration that hit a limit fails with (FailoverVMMigration status.reason).
COMPLETION_TIMEOUT = "CompletionTimeout"
NO_PROGRESS = "NoProgress"
POST_COPY_FAILED = "PostCopyFailed"

# How long a migration whose switch to post-copy libvirt keeps refusing may go on trying (seconds
# of the job's own clock, the switch asked again at every sample) before it is aborted instead:
# without this a migration that cannot converge in pre-copy would run forever.
POST_COPY_SWITCH_GRACE_SECONDS = 60

# Actions of the monitor.
CONTINUE, START_POST_COPY, ABORT = "continue", "start-post-copy", "abort"


@dataclass(frozen=True)
class EffectivePolicy:
    """The settings one migration runs with (FailoverVMMigration status.policy, camelCase there)."""

    name: str = ""  # the FailoverMigrationPolicy applied ("": none matched, built-in defaults)
    bandwidth_mibps: int | None = None  # None: unlimited
    completion_timeout_per_gib: int = DEFAULT_COMPLETION_TIMEOUT_PER_GIB
    completion_timeout_seconds: int = DEFAULT_COMPLETION_TIMEOUT_PER_GIB  # for this VM's memory
    progress_timeout_seconds: int = DEFAULT_PROGRESS_TIMEOUT
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    post_copy_after_iterations: int | None = None  # None: only when the completion timeout is reached
    parallel_connections: int = 1
    max_downtime_ms: int | None = None  # None: QEMU's default (300 ms)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is not None:
                out[_camel(key)] = value
        return out

    @classmethod
    def from_status(cls, st: Mapping[str, Any] | None) -> EffectivePolicy | None:
        """The policy recorded on a migration (None: none recorded, e.g. one accepted before
        policies existed: it runs with the defaults for its memory)."""
        if not st:
            return None
        fields = {k: st[_camel(k)] for k in asdict(cls()) if _camel(k) in st}
        return cls(**fields)

    def describe(self) -> str:
        parts = [f"policy {self.name or '(defaults)'}",
                 f"completion timeout {self.completion_timeout_seconds}s",
                 f"progress timeout {self.progress_timeout_seconds}s"]
        if self.bandwidth_mibps:
            parts.append(f"bandwidth {self.bandwidth_mibps} MiB/s")
        if self.allow_auto_converge:
            parts.append("auto-converge")
        if self.allow_post_copy:
            parts.append("post-copy" + (f" after {self.post_copy_after_iterations} iterations"
                                        if self.post_copy_after_iterations else " at the timeout"))
        if self.parallel_connections > 1:
            parts.append(f"{self.parallel_connections} connections")
        if self.max_downtime_ms:
            parts.append(f"max downtime {self.max_downtime_ms} ms")
        return ", ".join(parts)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    out = head + "".join(p.capitalize() for p in rest)
    return out.replace("Mibps", "MiBps").replace("PerGib", "PerGiB")


# -- selection ---------------------------------------------------------------------------------------
def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against a set of labels (absent or empty: matches everything)."""
    sel = selector or {}
    for key, value in (sel.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _requirements(selector: Mapping[str, Any] | None) -> int:
    sel = selector or {}
    return len(sel.get("matchLabels") or {}) + len(sel.get("matchExpressions") or [])


def specificity(policy: Mapping[str, Any]) -> tuple[int, int]:
    """(all requirements, VM-selector requirements): higher is more specific."""
    spec = policy.get("spec") or {}
    vm_req = _requirements(spec.get("vmSelector"))
    return vm_req + _requirements(spec.get("namespaceSelector")), vm_req


def select_policy(policies: Iterable[Mapping[str, Any]], namespace_labels: Mapping[str, str],
                  vm_labels: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The policy that applies to a VM (see the module's docstring for the precedence), or None."""
    matching = [p for p in policies
                if not (p.get("metadata") or {}).get("deletionTimestamp")
                and selector_matches((p.get("spec") or {}).get("namespaceSelector"), namespace_labels)
                and selector_matches((p.get("spec") or {}).get("vmSelector"), vm_labels)]
    if not matching:
        return None
    return min(matching, key=lambda p: (-specificity(p)[0], -specificity(p)[1], str(p["metadata"]["name"])))


def completion_timeout(per_gib: int, memory_bytes: int) -> int:
    """Seconds a migration of a guest with this much memory may take (at least one GiB counted)."""
    return math.ceil(per_gib * max(1.0, memory_bytes / GIB))


def effective_policy(policy: Mapping[str, Any] | None, memory_bytes: int,
                     migration_spec: Mapping[str, Any] | None = None) -> EffectivePolicy:
    """The settings one migration runs with: the policy's over the built-in defaults, and the
    migration's own spec.bandwidthMiBps over both."""
    spec = (policy or {}).get("spec") or {}
    eff = EffectivePolicy(name=str(((policy or {}).get("metadata") or {}).get("name") or ""))
    per_gib = int(spec.get("completionTimeoutPerGiB") or eff.completion_timeout_per_gib)
    eff = replace(
        eff,
        bandwidth_mibps=int(spec["bandwidthPerMigrationMiBps"]) if spec.get("bandwidthPerMigrationMiBps") else None,
        completion_timeout_per_gib=per_gib,
        completion_timeout_seconds=completion_timeout(per_gib, memory_bytes),
        progress_timeout_seconds=int(spec.get("progressTimeoutSeconds") or eff.progress_timeout_seconds),
        allow_auto_converge=bool(spec.get("allowAutoConverge", False)),
        allow_post_copy=bool(spec.get("allowPostCopy", False)),
        post_copy_after_iterations=(int(spec["postCopyAfterIterations"])
                                    if spec.get("allowPostCopy") and spec.get("postCopyAfterIterations") else None),
        parallel_connections=int(spec.get("parallelConnections") or 1),
        max_downtime_ms=int(spec["maxDowntimeMs"]) if spec.get("maxDowntimeMs") else None,
    )
    own = (migration_spec or {}).get("bandwidthMiBps")
    if own:
        eff = replace(eff, bandwidth_mibps=int(own))
    return eff


# -- the bounded end -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    action: str  # CONTINUE, START_POST_COPY or ABORT
    reason: str = ""  # ABORT: COMPLETION_TIMEOUT or NO_PROGRESS; START_POST_COPY: why
    message: str = ""


@dataclass
class Monitor:
    """Watches one running migration's job samples and says when to abort it or switch it to
    post-copy. `observe` is called with the seconds since the transfer started, the bytes still
    to copy (libvirt's data_remaining; None: not reported yet) and the pre-copy iteration.

    - completion timeout reached: post-copy when allowed, else abort (CompletionTimeout);
    - the data left to copy has not dropped below its lowest value for the progress timeout, and
      auto-converge has not throttled the guest harder meanwhile: post-copy when allowed, else
      abort (NoProgress). A throttle raised is progress: QEMU is still closing in on convergence,
      and the lowest value may be a sample taken between two passes, before the next pass's pages
      were counted, which later samples cannot beat while the guest runs (a 12 KiB one aborted an
      auto-converging migration on the sandbox);
    - post-copy after N iterations when the policy says so.

    A switch to post-copy counts only once the caller reports it done (`switched`): until then
    every sample asks for it again, and when libvirt has refused it (`switch_failed`) for
    POST_COPY_SWITCH_GRACE_SECONDS the migration is aborted (PostCopyFailed), so a migration that
    cannot converge in pre-copy never runs forever. Once in post-copy nothing aborts it: the guest
    already runs on the destination."""

    policy: EffectivePolicy
    lowest_remaining: int | None = None
    lowest_at: float = 0.0
    highest_throttle: int = 0  # auto-converge's vCPU throttle so far, in percent
    post_copy: bool = False
    done: bool = False
    switch_asked_at: float | None = None  # when post-copy was first asked for (job clock)
    switch_error: str = ""  # libvirt's last refusal of the switch
    switch_why: str = ""  # the message of the decision to switch

    def observe(self, elapsed: float, remaining: int | None, iteration: int | None,
                throttle: int | None = None) -> Decision:
        if self.post_copy or self.done:
            return Decision(CONTINUE)
        if self.switch_asked_at is not None:
            waited = elapsed - self.switch_asked_at
            if self.switch_error and waited >= POST_COPY_SWITCH_GRACE_SECONDS:
                return self._abort(POST_COPY_FAILED, f"libvirt refused the switch to post-copy for {waited:.0f}s "
                                                     f"(the last refusal: {self.switch_error})")
            return Decision(START_POST_COPY, "PostCopy", self.switch_why)
        p = self.policy
        if remaining is not None and (self.lowest_remaining is None or remaining < self.lowest_remaining):
            self.lowest_remaining, self.lowest_at = remaining, elapsed
        if throttle is not None and throttle > self.highest_throttle:
            self.highest_throttle, self.lowest_at = throttle, elapsed  # auto-converge closing in
        if p.allow_post_copy and p.post_copy_after_iterations and (iteration or 0) >= p.post_copy_after_iterations:
            return self._post_copy(elapsed, f"pre-copy reached iteration {iteration} (postCopyAfterIterations "
                                            f"{p.post_copy_after_iterations})")
        if elapsed >= p.completion_timeout_seconds:
            why = (f"not completed within its completion timeout of {p.completion_timeout_seconds}s "
                   f"({p.completion_timeout_per_gib}s per GiB of guest memory)")
            return self._post_copy(elapsed, why) if p.allow_post_copy else self._abort(COMPLETION_TIMEOUT, why)
        stalled = elapsed - self.lowest_at
        if self.lowest_remaining is not None and stalled >= p.progress_timeout_seconds:
            why = (f"no progress for {stalled:.0f}s (progress timeout {p.progress_timeout_seconds}s): the data left "
                   f"to copy has not dropped below {self.lowest_remaining} bytes"
                   + (f" nor auto-converge's throttle risen above {self.highest_throttle}%" if self.highest_throttle
                      else "") + "; the guest dirties memory faster than the link copies it")
            return self._post_copy(elapsed, why) if p.allow_post_copy else self._abort(NO_PROGRESS, why)
        return Decision(CONTINUE)

    def switched(self) -> None:
        """The caller's migrateStartPostCopy succeeded: the migration is in post-copy now."""
        self.post_copy = True

    def switch_failed(self, error: str) -> None:
        """The caller's migrateStartPostCopy was refused: asked again at the next sample, aborted
        once refused for POST_COPY_SWITCH_GRACE_SECONDS."""
        self.switch_error = error

    def _post_copy(self, elapsed: float, why: str) -> Decision:
        self.switch_asked_at, self.switch_why = elapsed, f"switched to post-copy: {why}"
        return Decision(START_POST_COPY, "PostCopy", self.switch_why)

    def _abort(self, reason: str, why: str) -> Decision:
        self.done = True
        return Decision(ABORT, reason, f"aborted: {why}")
