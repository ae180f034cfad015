/**
 * VM mode through the containerd shim v2 (io.containerd.nanokata.v2), with
 * Debian's containerd started here and `ctr`: a VM-mode task (the
 * io.nanokata.mode annotation), and a pod -- containers grouped by CRI's
 * sandbox annotations, as containerd's CRI plugin writes them -- served by
 * one shim and running in one VM. exec, pause/resume, metrics and kill go
 * through the shim's Task API into the guest. Real microVMs (TCG here).
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { release, tmpdir } from "node:os";
import { join } from "node:path";
import { testIf } from "../helpers/runtime.ts";
import { containerdAvailable, have, IMAGE, isDirEmpty, shimProcesses, startContainerd, taskStatusOf, until, type Containerd } from "./shim-containerd.ts";
import { cgroupTopLevel, removeNewCgroupParents } from "./daemons.ts";
import { ensureVmImage, processesNaming, VM_CACHE, vmSkipReason } from "./vm-helpers.ts";

const RUNTIME = "io.containerd.nanokata.v2";
const SKIP = containerdAvailable() ?? vmSkipReason();
const IMAGE_ERROR = SKIP ? "" : ensureVmImage();
const VM_TEST_TIMEOUT = 300_000;

let c: Containerd;
const templates = mkdtempSync(join(tmpdir(), "nkt-shim-templates-"));
let cgroupsBefore: Map<string, Set<string>>;
const ids: string[] = [];

function id(name: string): string {
  const v = `nkvm-${name}-${process.pid}`;
  ids.push(v);
  return v;
}

const run = (args: string[]) => c.ctr(["run", "--runtime", RUNTIME, ...args], { timeoutMs: 180_000 });
const exec = (task: string, execId: string, args: string[]) => c.ctr(["task", "exec", "--exec-id", execId, task, ...args], { timeoutMs: 60_000 });

const taskStatus = (taskId: string) => taskStatusOf(c, taskId);

const ourShims = () => shimProcesses().filter((p) => p.cmdline.includes(c.address)).map((p) => p.pid);
const ourQemus = () => processesNaming(c.dir).filter((p) => p.includes("qemu-system"));

async function removeTask(t: string): Promise<void> {
  c.ctr(["task", "kill", "-s", "SIGKILL", t]);
  await until(() => taskStatus(t) !== "RUNNING" && taskStatus(t) !== "PAUSED", 20_000);
  expect(c.ctr(["task", "delete", t]).code).toBe(0);
  expect(c.ctr(["container", "rm", t]).code).toBe(0);
}

describe("VM mode through the containerd shim", () => {
  beforeAll(async () => {
    if (SKIP) return;
    cgroupsBefore = cgroupTopLevel();
    c = await startContainerd({ env: { NK_VM_CACHE: VM_CACHE, NK_VM_TEMPLATE_DIR: templates } });
  }, 120_000);

  afterAll(async () => {
    if (!c) return;
    for (const t of ids.reverse()) {
      c.ctr(["task", "kill", "-s", "SIGKILL", t]);
      c.ctr(["task", "delete", "--force", t]);
      c.ctr(["container", "rm", t]);
    }
    await c.stop();
    rmSync(templates, { recursive: true, force: true });
    const problems = removeNewCgroupParents(cgroupsBefore, ["default"]);
    if (problems.length) throw new Error(problems.join("\n"));
  }, 120_000);

  testIf(
    SKIP,
    "ctr run --rm of a VM-mode task: the guest's kernel, output and exit code",
    () => {
      expect(IMAGE_ERROR).toBe("");
      const r = run(["--rm", "--annotation", "io.nanokata.mode=vm", IMAGE, id("rm"), "sh", "-c", "uname -r; echo to-stderr >&2; exit 3"]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 3, stderr: "to-stderr\n" });
      const kernel = r.stdout.trim();
      expect(kernel.length).toBeGreaterThan(0);
      expect(kernel).not.toBe(release());
    },
    VM_TEST_TIMEOUT,
  );

  testIf(
    SKIP,
    "ctr run --rm with io.nanokata.vm.template=true: the task's VM is a clone of a template (made by the first run), output and exit code",
    () => {
      expect(IMAGE_ERROR).toBe("");
      for (const round of ["first", "second"]) {
        const r = run(["--rm", "--annotation", "io.nanokata.mode=vm", "--annotation", "io.nanokata.vm.template=true", IMAGE, id(`tmpl-${round}`), "sh", "-c", "grep ' / ' /proc/mounts; exit 4"]);
        expect({ round, code: r.code, stderr: r.stderr }).toEqual({ round, code: 4, stderr: "" });
        expect(r.stdout).toMatch(/^\/dev\/vda \/ ext4 /);
      }
      expect(readdirSync(templates).filter((n) => /^[0-9a-f]{20}$/.test(n))).toHaveLength(1);
      expect(ourQemus()).toEqual([]);
    },
    VM_TEST_TIMEOUT,
  );

  testIf(
    SKIP || (have("script") ? null : "needs `script` (util-linux)"),
    "ctr run -t of a VM-mode task: the guest's terminal, resized to the client's size",
    () => {
      expect(IMAGE_ERROR).toBe("");
      const cmd = `stty cols 97 rows 31; ctr --address ${c.address} run -t --rm --runtime ${RUNTIME} --annotation io.nanokata.mode=vm ${IMAGE} ${id("tty")} sh -c 'tty; sleep 1; stty size; exit 5'`;
      const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 120_000, input: "" });
      const out = (r.stdout ?? "").replace(/\r/g, "");
      expect(out).toContain("/dev/pts/");
      expect(out).toContain("31 97");
    },
    VM_TEST_TIMEOUT,
  );

  testIf(
    SKIP,
    "a pod (CRI sandbox annotations): one shim, one VM; exec, pause/resume, metrics and kill through the shim",
    async () => {
      expect(IMAGE_ERROR).toBe("");
      const sandbox = id("sandbox");
      const member = id("member");
      const pod = (type: string) => ["--annotation", "io.nanokata.mode=vm", "--annotation", `io.kubernetes.cri.container-type=${type}`, "--annotation", `io.kubernetes.cri.sandbox-id=${sandbox}`];
      expect(run(["-d", ...pod("sandbox"), IMAGE, sandbox, "sleep", "1000"]).code).toBe(0);
      expect(run(["-d", ...pod("container"), IMAGE, member, "sleep", "1000"]).code).toBe(0);
      expect(ourShims()).toHaveLength(1);
      expect(ourQemus()).toHaveLength(1);

      // exec in each: one guest kernel boot (the same boot_id), exit codes through the shim.
      const inSandbox = exec(sandbox, "boot-s", ["cat", "/proc/sys/kernel/random/boot_id"]);
      const inMember = exec(member, "boot-m", ["cat", "/proc/sys/kernel/random/boot_id"]);
      expect(inSandbox.code).toBe(0);
      expect(inMember.stdout).toBe(inSandbox.stdout);
      expect(inMember.stdout).toMatch(/^[0-9a-f-]{36}\n$/);
      expect(exec(member, "code", ["sh", "-c", "exit 4"]).code).toBe(4);

      // pause/resume stop and continue the whole VM; a member alone cannot be paused.
      expect(c.ctr(["task", "pause", sandbox]).code).toBe(0);
      expect(taskStatus(sandbox)).toBe("PAUSED");
      expect(c.ctr(["task", "resume", sandbox]).code).toBe(0);
      expect(taskStatus(sandbox)).toBe("RUNNING");
      const memberPause = c.ctr(["task", "pause", member]);
      expect(memberPause.code).not.toBe(0);
      expect(memberPause.stderr).toContain(`runs in the VM of its pod sandbox ${sandbox}`);

      // Metrics: the guest cgroup's, through the VM's channel.
      const metrics = c.ctr(["task", "metrics", sandbox]);
      expect(metrics.code).toBe(0);
      expect(metrics.stdout).toMatch(/pids\.current\s+[1-9]/);

      // A long exec killed through the shim's Kill (its pid is a guest pid: the signal goes through the session).
      const sleeper = c.ctrSpawn(["task", "exec", "--exec-id", "sleeper", member, "sleep", "1000"]);
      const sleeperExit = new Promise<number | null>((resolve) => sleeper.on("exit", (code) => resolve(code)));
      await until(() => c.ctr(["task", "ps", member]).stdout.length > 0 && exec(member, "ps", ["sh", "-c", "ps | grep -c '[s]leep 1000'"]).stdout.trim() === "2", 20_000);
      expect(c.ctr(["task", "kill", "--exec-id", "sleeper", "-s", "SIGTERM", member]).code).toBe(0);
      expect(await sleeperExit).toBe(143);

      // exec -t: the guest's pty, relayed as is; ResizePty becomes the guest pty's size.
      if (have("script")) {
        const cmd = `stty cols 83 rows 23; ctr --address ${c.address} task exec -t --exec-id tty1 ${member} sh -c 'tty; sleep 0.5; stty size; exit 6'`;
        const tty = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 60_000, input: "" });
        const out = (tty.stdout ?? "").replace(/\r/g, "");
        expect(out).toContain("/dev/pts/");
        expect(out).toContain("23 83");
      } else console.log("SKIP part: ctr task exec -t needs `script` (util-linux)");

      await removeTask(member);
      expect(taskStatus(sandbox)).toBe("RUNNING");
      await removeTask(sandbox);
      await until(() => ourShims().length === 0 && ourQemus().length === 0, 20_000);
      expect(isDirEmpty(join(c.dir, "state", "io.containerd.runtime.v2.task", "default"))).toBe(true);
    },
    VM_TEST_TIMEOUT,
  );
});
