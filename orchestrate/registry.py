"""Builds the step registry from the stages. The only place that knows which stage offers
which step kinds; orchestrate's runner itself names none."""

from __future__ import annotations

from orchestrate.steps import StepRegistry


def build_registry() -> StepRegistry:
    from configure.apply import ApplyRolesStep, ApplyRoleStep
    from configure.command import CommandStep
    from configure.facts import GatherFactsStep
    from configure.verify import VerifyStep
    from configure.vmstep import VmStep
    from provision.power_step import PowerStep
    from provision.sshcheck import ssh_answers_with

    registry = StepRegistry()
    registry.register(CommandStep())
    registry.register(GatherFactsStep())
    registry.register(ApplyRolesStep())
    registry.register(ApplyRoleStep())
    registry.register(VerifyStep())
    registry.register(PowerStep())
    # A guest is up when its SSH answers with the key pinned for it (provision's probe).
    registry.register(VmStep(host_key_probe=ssh_answers_with))
    return registry
