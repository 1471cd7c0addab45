"""NOPS agent SDK: an agent joins the NOPS kernel in a dozen lines.

    from nops_agent import create_agent

    agent = create_agent(name="summarizer")

    @agent.handle("summarize")
    def summarize(inv):
        return inv.text()[:200]

    agent.run()  # registers, heartbeats, serves; drains and deregisters on SIGTERM
"""

__version__ = "0.1.0"

from .agent import EVENTS, Agent, Event, InvokeResult, PublishResult, Subscription, create_agent
from .errors import (
    AgentStoppedError,
    ApiKeyRotationError,
    ConfigError,
    HandlerError,
    IdentityError,
    KernelError,
    KernelUnavailableError,
    NopsError,
    RegistrationError,
)
from .invocation import Invocation, Reply, current_invocation
from .options import AgentOptions, resolve_options

__all__ = [
    "__version__",
    "EVENTS",
    "Agent",
    "AgentOptions",
    "AgentStoppedError",
    "ApiKeyRotationError",
    "ConfigError",
    "Event",
    "HandlerError",
    "IdentityError",
    "Invocation",
    "InvokeResult",
    "KernelError",
    "KernelUnavailableError",
    "NopsError",
    "PublishResult",
    "RegistrationError",
    "Reply",
    "Subscription",
    "create_agent",
    "current_invocation",
    "resolve_options",
]
