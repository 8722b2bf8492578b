"""Resources: desired state, each split into probe -> decide -> act.

A resource declares the probes it needs (shell snippets whose output a pure function reads),
``decide`` compares what the probes found with what is wanted and returns the actions (or
none), and the engine runs actions. Check mode stops before acting, so what check mode
predicts and what a real run does come from the same code.
"""

from configure.resources.base import Action, Decision, Probe, Resource, ResourceSpecError
from configure.resources.registry import RESOURCE_KINDS, parse_resource

__all__ = ["RESOURCE_KINDS", "Action", "Decision", "Probe", "Resource", "ResourceSpecError",
           "parse_resource"]
