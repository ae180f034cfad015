/**
 * One VM per pod (src/vm/pod.ts), through the runtime's own command line: a
 * pod's sandbox runs in VM mode, and a container that names it -- by CRI's
 * annotations, as containerd's CRI plugin writes them, or by
 * io.nanokata.sandbox -- runs in the same VM: same guest kernel boot, the
 * sandbox's namespaces, no second QEMU. Real microVMs (TCG here).
 */
import { afterEach, describe, expect } from "bun:test";
import { readFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { deleteForce, newBundle, ok, startContainer, state, stateRoot, testIf, waitForStatus } from "../helpers/runtime.ts";
import type { Bundle } from "../helpers/bundle.ts";
import { ensureVmImage, expectNothingLeft, processesNaming, vcreate, vmSkipReason, vrt } from "./vm-helpers.ts";

const SKIP = vmSkipReason();
// At load time rather than in beforeAll: a hook is bound by the per-test timeout, a first build may take longer.
const IMAGE_ERROR = SKIP ? "" : ensureVmImage();
const POD_TIMEOUT = 300_000;

const used: string[] = [];
afterEach(async () => {
  // Members first, then sandboxes (a pod is torn down in that order by CRI too).
  for (const id of used.splice(0).reverse()) deleteForce(id);
});

function sandboxBundle(): Bundle {
  const b = newBundle({
    args: ["sleep", "1000"],
    override: (c) => {
      c.hostname = "pod-host";
      c.annotations = { "io.nanokata.mode": "vm" };
    },
  });
  used.push(b.id);
  return b;
}

/** A pod member as CRI writes it: type "container", the sandbox's id, and the sandbox's namespaces by path. */
function memberBundle(sandbox: Bundle, sandboxPid: number, args: string[], annotations?: Record<string, string>): Bundle {
  const b = newBundle({
    args,
    override: (c) => {
      c.annotations = annotations ?? { "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox.id, "io.nanokata.mode": "vm" };
      delete c.hostname;
      const shared = new Set(["network", "ipc", "uts"]);
      c.linux.namespaces = [
        ...c.linux.namespaces.filter((ns: { type: string }) => !shared.has(ns.type)),
        ...[...shared].map((type) => ({ type, path: `/proc/${sandboxPid}/ns/${type === "network" ? "net" : type}` })),
      ];
    },
  });
  used.push(b.id);
  return b;
}

const qemusOf = (id: string) => processesNaming(join(stateRoot(), id)).filter((p) => p.includes("qemu-system"));
const bootId = (out: string) => out.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/)?.[0];

describe("one VM per pod", () => {
  testIf(
    SKIP,
    "a pod's containers share the sandbox's VM and namespaces; a member's delete leaves the sandbox running",
    async () => {
      expect(IMAGE_ERROR).toBe("");
      const sandbox = sandboxBundle();
      ok(vcreate(sandbox));
      ok(startContainer(sandbox.id));
      const sandboxPid = state(sandbox.id).pid!;
      const sandboxView = ok(vrt(["exec", sandbox.id, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; hostname"]));
      expect(qemusOf(sandbox.id)).toHaveLength(1);

      // A foreground run of a member: its output and exit status, from inside the same guest.
      const member = memberBundle(sandbox, sandboxPid, ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; hostname; uname -r; exit 7"]);
      const run = vrt(["run", "--bundle", member.dir, member.id]);
      expect(run.code).toBe(7);
      const [memberBoot, memberHost, memberKernel] = run.stdout.trim().split("\n");
      expect(memberBoot).toBe(bootId(sandboxView.stdout)!);
      expect(memberHost).toBe("pod-host"); // the sandbox's uts namespace, joined in the guest
      expect(memberKernel).not.toBe(release());
      await expectNothingLeft(member.id);

      // A created/started member with exec, then its delete: its share entry leaves virtiofsd, the sandbox runs on.
      const second = memberBundle(sandbox, sandboxPid, ["sleep", "1000"]);
      ok(vcreate(second));
      expect(state(second.id).status).toBe("created");
      expect(qemusOf(sandbox.id)).toHaveLength(1);
      expect(processesNaming(join(stateRoot(), second.id)).filter((p) => p.includes("qemu-system"))).toEqual([]);
      ok(startContainer(second.id));
      waitForStatus(second.id, "running");
      const exec = vrt(["exec", second.id, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 5"]);
      expect({ code: exec.code, boot: bootId(exec.stdout) }).toEqual({ code: 5, boot: bootId(sandboxView.stdout) });
      // pause acts on the whole VM: refused for a member, naming the sandbox.
      const pause = vrt(["pause", second.id]);
      expect(pause.code).not.toBe(0);
      expect(pause.stderr).toContain(`runs in the VM of its pod sandbox ${sandbox.id}`);

      const virtiofsd = JSON.parse(readFileSync(join(stateRoot(), sandbox.id, "vm-pids.json"), "utf8")).virtiofsd.pid as number;
      expect(readFileSync(`/proc/${virtiofsd}/mountinfo`, "utf8")).toContain(`ct-${second.id}-rootfs`);
      ok(vrt(["kill", second.id, "KILL"]));
      waitForStatus(second.id, "stopped");
      ok(vrt(["delete", second.id]));
      await expectNothingLeft(second.id);
      expect(readFileSync(`/proc/${virtiofsd}/mountinfo`, "utf8")).not.toContain(`ct-${second.id}-rootfs`);
      expect(state(sandbox.id).status).toBe("running");
      expect(ok(vrt(["exec", sandbox.id, "true"])).code).toBe(0);

      // A member still running when the sandbox goes stops with it.
      const third = memberBundle(sandbox, sandboxPid, ["sleep", "1000"]);
      ok(vcreate(third));
      ok(startContainer(third.id));
      ok(vrt(["delete", "--force", sandbox.id]));
      await expectNothingLeft(sandbox.id);
      waitForStatus(third.id, "stopped");
      ok(vrt(["delete", third.id]));
      await expectNothingLeft(third.id);
    },
    POD_TIMEOUT,
  );

  testIf(SKIP, "io.nanokata.sandbox naming no VM-mode container is an error naming the annotation; nothing is left", async () => {
    const missing = newBundle({
      args: ["true"],
      override: (c) => {
        c.annotations = { "io.nanokata.mode": "vm", "io.nanokata.sandbox": "no-such-sandbox" };
      },
    });
    used.push(missing.id);
    const r = vcreate(missing);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('annotations["io.nanokata.sandbox"]: no container no-such-sandbox in this runtime root');
    await expectNothingLeft(missing.id);
  });
});
