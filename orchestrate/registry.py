"""Builds the step registry from the stages. The only place that knows which stage offers
which step kinds; orchestrate's runner itself names none."""

from __future__ import annotations

from orchestrate.steps import StepRegistry


def build_registry() -> StepRegistry:
    from configure.apply import ApplyRolesStep, ApplyRoleStep
    from configure.command import CommandStep
    from configure.facts import GatherFactsStep
    from configure.verify import VerifyStep
    from configure.virsh_power import VmPowerStep
    from configure.vmstep import VmStep
    from orchestrate.monitor_step import MonitorStep
    from provision.power_step import PowerStep
    from provision.provision_step import ProvisionStep
    from provision.sshcheck import ssh_answers_with

    registry = StepRegistry()
    registry.register(CommandStep())
    registry.register(GatherFactsStep())
    registry.register(ApplyRolesStep())
    registry.register(ApplyRoleStep())
    registry.register(VerifyStep())
    registry.register(VmPowerStep())
    registry.register(PowerStep())
    # The run's provisioner and monitoring (orchestrate.runs builds them per run; nothing
    # starts until a step needs it).
    registry.register(ProvisionStep())
    registry.register(MonitorStep())
    # A guest is up when its SSH answers with the key pinned for it (provision's probe).
    registry.register(VmStep(host_key_probe=ssh_answers_with))
    return registry
