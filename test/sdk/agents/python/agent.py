"""Conformance agent built on the Python SDK (nops_agent), driven by test/sdk/python-conformance.test.ts.

Configuration comes from the SDK's own environment variables (NOPS_KERNEL_ADDRESS, NOPS_IDENTITY_DIR,
NOPS_TENANT, NOPS_API_KEY_FILE, ...) plus AGENT_NAME. It prints one JSON object per line on stdout:
  {"event": "registered", "agentId", "endpoint"}   once start() returned
  {"event": "agent-id", "agentId"}                 after each re-registration (the kernel forgot it)
  {"event": "rotated", "keyId"}                    after a "rotate" command
  {"event": "invoked", "agentId", "payload"}       after "invoke <capability> <text>" (through the kernel)
  {"event": "published", "eventId", "subject"}     after "publish <subject> <text>"
  {"event": "received", "eventId", "subject", "payload"}  per event of "subscribe <consumer> <filter>"
  {"event": "register-retried", "agentId", "failures"}  after "register-retry <n> <deadline ms>"
  {"event": "load", "calls", "failures"}           after "load-stop" (load-start: RegisterAgent in a loop)
  {"event": "load-progress", "calls", "failures"}  after "load-progress" (the load keeps running)
  {"event": "slow-started"}                        when a "slow" call entered its handler
  {"event": "stopped"}                             after SIGTERM drained and deregistered it
Commands arrive on stdin, one per line.
"""

import json
import logging
import os
import sys
import threading
import time

from nops_agent import KernelError, KernelUnavailableError, create_agent

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
out_lock = threading.Lock()


def emit(**event):
    with out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


agent = create_agent(name=os.environ.get("AGENT_NAME", "conformance-py"), heartbeat_interval=1.0, drain_timeout=20)


@agent.handle("echo")
def echo(inv):
    remaining = inv.time_remaining()
    return {
        "payload": inv.text(),
        "remainingMs": None if remaining is None else round(remaining * 1000),
        "traceparent": inv.traceparent,
        "tenant": inv.tenant,
        "attempt": inv.attempt,
    }


@agent.handle("slow")
def slow(inv):
    emit(event="slow-started")
    time.sleep(int(inv.text() or "0") / 1000.0)
    return "done"


@agent.handle_stream("count")
def count(inv):
    for i in range(int(inv.text() or "3")):
        yield str(i)


load = {"stop": threading.Event(), "calls": 0, "failures": 0, "thread": None}


def run_load():
    # Authenticated kernel calls back to back (idempotent re-registrations), so a credential
    # swap that broke any call would show up as a failure.
    while not load["stop"].is_set():
        try:
            agent.register()
            load["calls"] += 1
        except KernelError as err:
            load["failures"] += 1
            logging.error("load call failed: %s", err)


def commands():
    for line in sys.stdin:
        parts = line.split()
        try:
            if parts[:1] == ["rotate"]:
                emit(event="rotated", keyId=agent.rotate_api_key())
            elif parts[:1] == ["invoke"]:
                r = agent.invoke(parts[1], " ".join(parts[2:]), timeout=5)
                emit(event="invoked", agentId=r.agent_id, payload=r.payload.decode(), attempts=r.attempts)
            elif parts[:1] == ["publish"]:
                r = agent.publish(parts[1], {"text": " ".join(parts[2:])})
                emit(event="published", eventId=r.event_id, subject=r.subject, duplicate=r.duplicate)
            elif parts[:1] == ["subscribe"]:
                agent.subscribe(
                    parts[1],
                    lambda e: emit(event="received", eventId=e.event_id, subject=e.subject, payload=e.json()),
                    filter=parts[2],
                )
                emit(event="subscribed", consumer=parts[1])
            elif parts[:1] == ["load-start"]:
                load["thread"] = threading.Thread(target=run_load, daemon=True)
                load["thread"].start()
            elif parts[:1] == ["load-progress"]:
                emit(event="load-progress", calls=load["calls"], failures=load["failures"])
            elif parts[:1] == ["load-stop"]:
                load["stop"].set()
                load["thread"].join()
                emit(event="load", calls=load["calls"], failures=load["failures"])
            elif parts[:1] == ["register-retry"]:
                n, deadline_ms = int(parts[1]), float(parts[2])
                failures = 0
                for _ in range(n):
                    try:
                        agent.register(timeout=deadline_ms / 1000.0)
                    except KernelError:
                        failures += 1
                # register() is one attempt (its contract: the caller retries a transient failure); the
                # connection the cut-short attempts ran on may be dropped, so retry that here.
                for attempt in range(5):
                    try:
                        agent_id = agent.register()
                        break
                    except KernelUnavailableError:
                        if attempt == 4:
                            raise
                        time.sleep(0.2)
                emit(event="register-retried", agentId=agent_id, failures=failures)
        except Exception as err:  # reported, never fatal: the test decides
            emit(event="error", command=line.strip(), error=str(err))


ids = []


def on_registered(e):
    if ids and e["agent_id"] != ids[-1]:
        emit(event="agent-id", agentId=e["agent_id"])
    ids.append(e["agent_id"])


agent.on("registered", on_registered)
agent.start()
emit(event="registered", agentId=agent.agent_id, endpoint=agent.endpoint)
threading.Thread(target=commands, daemon=True).start()
agent.run()
emit(event="stopped")
