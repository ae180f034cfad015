#!/usr/bin/env python3
"""Run a command on a new pseudo-terminal, as a person at a terminal would.

    pty-run.py [--timeout S] [--expect TEXT --send TEXT]... -- command args...

The command gets a fresh pty as its controlling terminal and stdin/stdout/
stderr (80x24). Each --expect/--send pair waits until TEXT has appeared in the
output (counting from after the previous expectation), then types the --send
text (escapes like \\n and \\x04 are decoded). A --send without an --expect
before it is typed at once. When the command exits (or the pty closes), one
JSON line goes to stdout:

    {"code": N, "output": "...", "timedOut": false, "waitingFor": null}

code is the exit status, 128+N for signal N, or -1 if it had to be killed at
the timeout. The e2e tests use this for `podman run -t`, `docker run -it`,
`ctr run -t` and `exec -t`.
"""
import codecs
import errno
import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time


def parse(argv):
    timeout = 30.0
    steps = []  # (expect or None, send)
    pending_expect = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            if pending_expect is not None:
                sys.exit("pty-run: --expect without a --send after it")
            return timeout, steps, argv[i + 1 :]
        if a == "--timeout":
            timeout = float(argv[i + 1])
        elif a == "--expect":
            pending_expect = codecs.decode(argv[i + 1], "unicode_escape")
        elif a == "--send":
            steps.append((pending_expect, codecs.decode(argv[i + 1], "unicode_escape")))
            pending_expect = None
        else:
            sys.exit(f"pty-run: unknown option {a}")
        i += 2
    sys.exit("pty-run: missing -- command")


def main():
    timeout, steps, command = parse(sys.argv[1:])
    if not command:
        sys.exit("pty-run: no command")
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        except OSError as e:
            os.write(2, f"pty-run: exec {command[0]}: {e}\n".encode())
        os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    deadline = time.monotonic() + timeout
    out = bytearray()
    searched_from = 0
    step = 0
    timed_out = False
    while True:
        # Type whatever is due: a step without an expectation, or one whose text has appeared.
        while step < len(steps):
            expect, send = steps[step]
            if expect is not None:
                at = out.find(expect.encode(), searched_from)
                if at < 0:
                    break
                searched_from = at + len(expect.encode())
            os.write(fd, send.encode())
            step += 1
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError as e:
            if e.errno == errno.EIO:  # every slave fd closed: the command (and its children) are done
                break
            raise
        if not chunk:
            break
        out += chunk
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if timed_out:
        code = -1
    elif os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    else:
        code = 128 + os.WTERMSIG(status)
    waiting = None
    if step < len(steps):
        waiting = steps[step][0]
    print(json.dumps({"code": code, "output": out.decode("utf-8", "replace"), "timedOut": timed_out, "waitingFor": waiting}))


if __name__ == "__main__":
    main()
