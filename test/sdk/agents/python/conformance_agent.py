"""The Python SDK's conformance agent: the process test/sdk/conformance.test.ts drives, with the same
contract as test/sdk/agents/conformance-agent.mjs (environment, capabilities, JSON lines on stdout,
signals). Runs on Debian's python3 with nothing but nops_agent on PYTHONPATH.
"""

import json
import os
import signal
import sys
import threading

import grpc
from nops_agent import HandlerError, KernelError, create_agent, telemetry
from nops_agent._gen.nops.kernel.v1 import agent_registry_pb2


def env(name, fallback=None):
    value = os.environ.get(name, fallback)
    if value is None:
        sys.stderr.write(f"conformance_agent: {name} is required\n")
        sys.exit(2)
    return value


out_lock = threading.Lock()


def say(**obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


tenant = env("NOPS_TENANT")
stats = {"kernelCalls": 0, "kernelFailures": 0, "failures": [], "rotations": 0, "served": 0}
stats_lock = threading.Lock()


def failed(where, err):
    with stats_lock:
        stats["kernelFailures"] += 1
        if len(stats["failures"]) < 20:
            stats["failures"].append(f"{where}: {err}")


kernel_url = env("NOPS_KERNEL_URL")
scheme, _, address = kernel_url.partition("://")
api_key = os.environ.get("NOPS_API_KEY", "")
agent = create_agent(
    tenant=tenant,
    name=env("NOPS_AGENT_NAME"),
    version="1.0.0",
    kernel_address=address.rstrip("/"),
    identity="dev" if scheme == "https" else "none",
    identity_dir=env("NOPS_DEV_IDENTITY_DIR"),
    api_key=api_key,
    api_key_grace_period=int(env("NOPS_API_KEY_GRACE_MS", "60000")) / 1000,
    drain_timeout=int(env("NOPS_DRAIN_TIMEOUT_MS", "30000")) / 1000,
)


def trace_id(inv):
    if telemetry.HAVE_OTEL:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if ctx.trace_id:
            return format(ctx.trace_id, "032x")
    parts = inv.traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


@agent.handle("echo")
def echo(inv):
    with stats_lock:
        stats["served"] += 1
    return json.dumps(
        {
            "text": inv.text(),
            "deadlineMs": None if inv.deadline is None else int(inv.deadline.timestamp() * 1000),
            "traceparent": inv.traceparent or None,
            "traceId": trace_id(inv),
            "requestId": inv.request_id,
            "attempt": inv.attempt,
            "callerId": inv.caller_id or None,
        }
    )


@agent.handle("slow")
def slow(inv):
    body = json.loads(inv.payload or b"{}")
    ms, tag = body.get("ms", 1000), body.get("tag", "")
    say(event="slow-started", tag=tag)
    if inv.wait_cancelled(ms / 1000):
        raise HandlerError("cancelled", grpc.StatusCode.CANCELLED)
    with stats_lock:
        stats["served"] += 1
    return json.dumps({"slept": ms, "tag": tag})


@agent.handle("stats")
def get_stats(inv):
    with stats_lock:
        return json.dumps(stats)


@agent.handle("fail")
def fail(inv):
    raise HandlerError("asked to fail", grpc.StatusCode.INVALID_ARGUMENT)


agent.on(
    "registered",
    lambda e: say(event="registered", agentId=e["agent_id"], replayed=e["replayed"], reregistered=e["reregistered"]),
)


def rotated(e):
    with stats_lock:
        stats["rotations"] += 1
    say(event="rotated", keyId=e["key_id"])


agent.on("api_key_rotated", rotated)
agent.on("warning", lambda e: failed("warning", e))
agent.on("kernel_unavailable", lambda e: say(event="kernel-unavailable", message=str(e)))
drained = {}


def on_drained(e):
    drained.update(e)
    say(event="drained", deregistered=e["deregistered"], cutCalls=e["cut_calls"])


agent.on("drained", on_drained)

# Load on the kernel from the agent's own credential, to show a key rotation fails no call.
# SIGUSR1 starts it and SIGHUP stops it, so the kernel restart does not count as failures.
loading = threading.Event()
loading_paused = threading.Event()  # never set: only used to sleep interruptibly
concurrency = int(env("NOPS_KERNEL_LOAD", "0"))


def worker():
    # Paced (20 ms between calls per worker): the scenario's kernel keeps its default per-IP rate
    # limit (100 a minute), which every process of the test shares from 127.0.0.1.
    while loading.is_set() and agent.agent_id and not loading_paused.wait(0.02):
        try:
            agent.kernel.call(
                "registry", "GetAgent", agent_registry_pb2.GetAgentRequest(tenant=tenant, id=agent.agent_id), 5.0
            )
            with stats_lock:
                stats["kernelCalls"] += 1
        except KernelError as err:
            failed("load", err)


def start_load():
    if loading.is_set():
        return
    loading.set()
    for _ in range(concurrency):
        threading.Thread(target=worker, daemon=True).start()
    say(event="load-started", concurrency=concurrency)


def stop_load():
    loading.clear()
    with stats_lock:
        snapshot = dict(stats)
    say(event="load-stopped", **snapshot)


def rotate():
    try:
        agent.rotate_api_key()
    except Exception as err:  # reported through the stats, like the TypeScript agent
        failed("rotate", err)


def on_signal(action):
    # Signal handlers run on the main thread between bytecodes: do the work on a thread of its own.
    return lambda *_: threading.Thread(target=action, daemon=True).start()


signal.signal(signal.SIGUSR1, on_signal(start_load))
signal.signal(signal.SIGHUP, on_signal(stop_load))
signal.signal(signal.SIGUSR2, on_signal(rotate))

agent.start()
say(event="ready", agentId=agent.agent_id, endpoint=agent.endpoint)
agent.run()  # SIGTERM: drain, then return
sys.exit(0 if drained.get("cut_calls", 0) == 0 else 1)
