/**
 * The Kubernetes path of the shim, without a cluster: a private containerd
 * with its CRI plugin on (test/e2e/cri-containerd.ts), driven through its
 * CRI socket by a small gRPC client (test/e2e/cri-client.ts) the way kubelet
 * drives it: RunPodSandbox with runtime handler `nanokata`, CreateContainer,
 * StartContainer, ContainerStatus, the CRI log file, StopContainer,
 * RemoveContainer, StopPodSandbox, RemovePodSandbox, ListContainers.
 *
 * The runtime handler tables, the RuntimeClass handler, the `ln -s` install
 * and the `ctr run` lines are read out of docs/shim.md's section "Use with
 * containerd (shim v2) and Kubernetes", so what the README says is what runs.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmdirSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { cgroupHierarchies } from "../helpers/runtime.ts";
import { repoRoot } from "../helpers/rootfs.ts";
import { ContainerState, CriClient, CriError, NamespaceMode, PodSandboxState, type ContainerConfig, type PodSandboxConfig } from "./cri-client.ts";
import { CRI_NAMESPACE, HANDLER_BY_PATH, PAUSE_IMAGE, POD_SUBNET, startCriContainerd, type CriContainerd } from "./cri-containerd.ts";
import { containerdAvailable, IMAGE, isDirEmpty, shimProcesses } from "./shim-containerd.ts";
import { startNetnsHolder, type NetnsHolder } from "./daemons.ts";
import { ensureVmImage, processesNaming, VM_CACHE, vmSkipReason } from "./vm-helpers.ts";

const skip = containerdAvailable();
const d = skip ? describe.skip : describe;
if (skip) console.log(`CRI e2e skipped: ${skip}`);

// ------------------------------------------------------------ the README section under test

const DOC_PLACEHOLDER_ROOT = "/opt/nano-kata";
const SHIM_NAME = "containerd-shim-nanokata-v2";

interface DocSnippets {
  /** The `ln -s` line. */
  link: string;
  /** The `ctr run` lines. */
  ctrRuns: string[];
  /** The TOML table naming the handler by runtime name. */
  handlerByName: string;
  /** The TOML table naming the handler by absolute path. */
  handlerByAbsolutePath: string;
  /** The RuntimeClass `handler:`. */
  runtimeClassHandler: string;
  /** VM mode: the `ln -s` line of the VM shim, its handler table, its RuntimeClass `handler:`. */
  vm: { link: string; handler: string; runtimeClassHandler: string };
}

const SECTION_TITLE = "Use with containerd (shim v2) and Kubernetes";

/**
 * The fenced code blocks of the section SECTION_TITLE of a markdown file (at
 * any heading level; it ends at the next heading of its level or above,
 * outside code), or undefined when the file has no such section.
 */
function sectionBlocks(path: string): { lang: string; body: string }[] | undefined {
  const blocks: { lang: string; body: string }[] = [];
  let level = 0; // the section's heading level once inside it
  let fence: { lang: string; lines: string[] } | undefined;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (fence) {
      if (line.startsWith("```")) {
        if (level > 0) blocks.push({ lang: fence.lang, body: fence.lines.map((l) => `${l}\n`).join("") });
        fence = undefined;
      } else fence.lines.push(line);
      continue;
    }
    const open = /^```(\w*)/.exec(line);
    if (open) {
      fence = { lang: open[1]!, lines: [] };
      continue;
    }
    const heading = /^(#+) (.*?)\s*$/.exec(line);
    if (!heading) continue;
    if (level > 0 && heading[1]!.length <= level) break;
    if (level === 0 && heading[2] === SECTION_TITLE) level = heading[1]!.length;
  }
  return level > 0 ? blocks : undefined;
}

function readDocSnippets(): DocSnippets {
  const blocks = sectionBlocks(join(repoRoot(), "docs", "shim.md"));
  if (!blocks) throw new Error(`docs/shim.md has no section '${SECTION_TITLE}'`);
  const shLines = blocks.filter((b) => b.lang === "sh").flatMap((b) => b.body.split("\n").map((l) => l.trim()).filter(Boolean));
  const tomls = blocks.filter((b) => b.lang === "toml" && b.body.includes("runtimes.nanokata]")).map((b) => b.body);
  const classes = blocks.filter((b) => b.lang === "yaml" && b.body.includes("kind: RuntimeClass")).map((b) => /^handler:\s*(\S+)\s*$/m.exec(b.body)?.[1]);
  const [handler, vmHandler] = classes;
  const byName = tomls.find((t) => t.includes('runtime_type = "io.containerd.nanokata.v2"'));
  const byPath = tomls.find((t) => t.includes(`runtime_type = "${DOC_PLACEHOLDER_ROOT}/bin/${SHIM_NAME}"`));
  const vmTable = blocks.find((b) => b.lang === "toml" && b.body.includes('runtime_type = "io.containerd.nanokata-vm.v2"'))?.body;
  const [link, vmLink] = shLines.filter((l) => l.startsWith("ln -s "));
  if (!byName || !byPath || !handler || !link || !vmTable || !vmHandler || !vmLink) throw new Error("docs/shim.md: a snippet the CRI test reads is missing");
  return {
    link,
    ctrRuns: shLines.filter((l) => l.startsWith("ctr run ")),
    handlerByName: byName,
    handlerByAbsolutePath: byPath,
    runtimeClassHandler: handler,
    vm: { link: vmLink, handler: vmTable, runtimeClassHandler: vmHandler },
  };
}

/** The handler name the absolute-path table gets here (both tables are `runtimes.nanokata` in the doc). */
const ABS_HANDLER = "nanokata-abs";

function handlerToml(s: DocSnippets): string {
  const byName = s.handlerByName
    .split("\n")
    .filter((l) => !/^version\s*=/.test(l.trim())) // the test's config has its own version line
    .join("\n");
  const byPath = s.handlerByAbsolutePath.replaceAll(DOC_PLACEHOLDER_ROOT, repoRoot()).replace("runtimes.nanokata]", `runtimes.${ABS_HANDLER}]`);
  return `${byName}\n${byPath}`;
}

// ------------------------------------------------------------ helpers

let c: CriContainerd;
let cri: CriClient;
let docs: DocSnippets;
const podIds: string[] = [];
const cgroupGroups: string[] = [];
const pidsSeen: number[] = [];
let podCount = 0;

async function until(check: () => boolean | Promise<boolean>, ms = 15_000, what = "a condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
}

/** The shim processes serving this test's containerd. */
function ourShims(): number[] {
  return shimProcesses()
    .filter((p) => p.cmdline.includes(c.address))
    .map((p) => p.pid);
}

/** nano-kata's own record of a container the shim runs (its init pid). */
function nanoKataState(id: string): { pid: number } | undefined {
  try {
    return JSON.parse(readFileSync(join(c.shimRoot, CRI_NAMESPACE, id, "state.json"), "utf8")) as { pid: number };
  } catch {
    return undefined;
  }
}

const HOST_NETWORK: ContainerConfig["linux"] = { namespaces: { network: NamespaceMode.NODE, pid: NamespaceMode.CONTAINER, ipc: NamespaceMode.POD } };

/** A host-network pod whose cgroups go under /nano-kata-test/<plain id>. */
function podConfig(name: string): PodSandboxConfig {
  const n = ++podCount;
  const group = `nk-cri-${process.pid}-${n}`;
  cgroupGroups.push(group);
  const logDirectory = join(c.dir, "pod-logs", `${name}-${n}`);
  mkdirSync(logDirectory, { recursive: true });
  return {
    metadata: { name, uid: `uid-${process.pid}-${n}`, namespace: "nk-test" },
    logDirectory,
    labels: { "nano-kata.test": name },
    linux: { cgroupParent: `/nano-kata-test/${group}`, namespaces: HOST_NETWORK!.namespaces },
  };
}

async function runPod(config: PodSandboxConfig, handler: string): Promise<string> {
  const id = await cri.runPodSandbox(config, handler);
  podIds.push(id);
  return id;
}

async function waitExited(containerId: string, ms = 15_000) {
  let status = await cri.containerStatus(containerId);
  await until(async () => (status = await cri.containerStatus(containerId)).state === ContainerState.EXITED, ms, `container ${containerId} to exit`);
  return status;
}

/** The CRI log format: "<RFC 3339 time> <stream> <P|F> <text>" per line. */
function parseCriLog(path: string): { time: string; stream: string; tag: string; text: string }[] {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const m = /^(\S+) (stdout|stderr) ([PF]) (.*)$/.exec(line);
      if (!m) throw new Error(`not a CRI log line: ${JSON.stringify(line)}`);
      return { time: m[1]!, stream: m[2]!, tag: m[3]!, text: m[4]! };
    });
}

const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/;

function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(dir + "/")));
}

function leftCgroups(): string[] {
  const left: string[] = [];
  for (const h of cgroupHierarchies()) for (const g of cgroupGroups) if (existsSync(join(h, "nano-kata-test", g))) left.push(join(h, "nano-kata-test", g));
  return left;
}

function processAlive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

// ------------------------------------------------------------ tests

d("Kubernetes CRI through containerd's socket, runtime handler from docs/shim.md", () => {
  beforeAll(async () => {
    docs = readDocSnippets();
    c = await startCriContainerd(handlerToml(docs));
    cri = await CriClient.connect(c.criSocket);
  }, 180_000);

  afterAll(async () => {
    if (!c) return;
    for (const id of podIds) {
      await cri?.stopPodSandbox(id).catch(() => {});
      await cri?.removePodSandbox(id).catch(() => {});
    }
    cri?.close();
    await c.stop();
    // The runtime removes the cgroups it made; an empty leftover is removed here, never a busy one.
    for (const dir of leftCgroups()) {
      try {
        rmdirSync(dir);
      } catch {}
    }
  }, 120_000);

  test("the daemon finds the shim through the README's `ln -s` link only", () => {
    expect(docs.link).toBe(`ln -s ${DOC_PLACEHOLDER_ROOT}/bin/${SHIM_NAME} /usr/local/bin/${SHIM_NAME}`);
    const link = join(c.dir, "bin", SHIM_NAME);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe(join(repoRoot(), "bin", SHIM_NAME));
    const path = readFileSync(`/proc/${c.pid}/environ`, "utf8").split("\0").find((e) => e.startsWith("PATH="))!;
    expect(path.split(/[=:]/)).toContain(join(c.dir, "bin"));
    expect(path.split(/[=:]/)).not.toContain(join(repoRoot(), "bin"));
  });

  test("gRPC over node:http2: Version, ImageStatus, and errors from trailers", async () => {
    const v = await cri.version();
    expect(v.runtimeName).toBe("containerd");
    expect(v.runtimeApiVersion).toBe("v1");
    expect(v.runtimeVersion).toMatch(/^\d+\.\d+/);
    const pause = await cri.imageStatus(PAUSE_IMAGE);
    expect(pause?.repoTags).toContain(PAUSE_IMAGE);
    expect(pause!.id).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect((await cri.imageStatus(IMAGE))?.repoTags).toContain(IMAGE);
    expect(await cri.imageStatus("docker.io/nanokata/absent:none")).toBeUndefined();
    // A failed call: grpc-status (not 0) and grpc-message arrive as trailers.
    const err = await cri.containerStatus("no-such-container").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CriError);
    expect((err as CriError).code).toBe("CRI_GRPC_STATUS");
    expect((err as CriError).grpcStatus).toBe(5); // NOT_FOUND
    expect((err as CriError).message).toContain("no-such-container");
    // An unknown handler is refused before any shim starts.
    const unknown = await cri.runPodSandbox(podConfig("unknown-handler"), "no-such-handler").catch((e: unknown) => e);
    expect((unknown as CriError).code).toBe("CRI_GRPC_STATUS");
    expect((unknown as CriError).message).toContain("no-such-handler");
  });

  test("a pod with the RuntimeClass handler runs a container; its line is in the CRI log; everything is removed", async () => {
    expect(docs.runtimeClassHandler).toBe("nanokata");
    const config = podConfig("echo-pod");
    const podId = await runPod(config, docs.runtimeClassHandler);
    const status = await cri.podSandboxStatus(podId);
    expect(status.state).toBe(PodSandboxState.READY);
    expect(status.runtimeHandler).toBe("nanokata");

    // nano-kata (not runc) runs the sandbox: its state, its cgroup under the pod's parent, the pause process.
    const sandbox = nanoKataState(podId);
    expect(sandbox).toBeDefined();
    pidsSeen.push(sandbox!.pid);
    expect(readFileSync(`/proc/${sandbox!.pid}/cmdline`, "utf8").split("\0").filter(Boolean)).toEqual(["/bin/sleep", "2147483647"]);
    expect(readFileSync(`/proc/${sandbox!.pid}/cgroup`, "utf8")).toContain(`${config.linux!.cgroupParent}/${podId}`);
    const shims = ourShims();
    expect(shims.length).toBe(1);
    // The shim itself is not charged to the pod (docs/shim.md's RuntimeClass overhead note).
    expect(readFileSync(`/proc/${shims[0]}/cgroup`, "utf8")).not.toContain(config.linux!.cgroupParent!);

    const containerConfig: ContainerConfig = {
      metadata: { name: "echo" },
      image: IMAGE,
      command: ["sh", "-c", "echo hello-from-cri; echo to-stderr >&2; exit 0"],
      logPath: "echo/0.log",
      linux: HOST_NETWORK,
    };
    const containerId = await cri.createContainer(podId, containerConfig, config);
    const created = await cri.containerStatus(containerId);
    expect(created.state).toBe(ContainerState.CREATED);
    expect(created.logPath).toBe(join(config.logDirectory!, "echo/0.log"));
    // The container joins the pod's shim.
    expect(ourShims()).toEqual(shims);

    await cri.startContainer(containerId);
    const exited = await waitExited(containerId);
    expect(exited.exitCode).toBe(0);
    expect(exited.reason).toBe("Completed");
    expect(exited.startedAt).toBeGreaterThan(0n);
    expect(exited.finishedAt).toBeGreaterThanOrEqual(exited.createdAt);

    const log = parseCriLog(exited.logPath);
    const stdout = log.filter((l) => l.stream === "stdout");
    expect(stdout.map((l) => `${l.tag} ${l.text}`)).toEqual(["F hello-from-cri"]);
    expect(log.filter((l) => l.stream === "stderr").map((l) => l.text)).toEqual(["to-stderr"]);
    for (const l of log) expect(l.time).toMatch(RFC3339);

    const listed = await cri.listContainers({ podSandboxId: podId });
    expect(listed.map((x) => [x.id, x.name, x.state])).toEqual([[containerId, "echo", ContainerState.EXITED]]);

    await cri.stopContainer(containerId, 0);
    await cri.removeContainer(containerId);
    expect(await cri.listContainers({ podSandboxId: podId })).toEqual([]);
    expect(nanoKataState(containerId)).toBeUndefined();
    expect(ourShims()).toEqual(shims); // still serving the sandbox

    await cri.stopPodSandbox(podId);
    expect((await cri.podSandboxStatus(podId)).state).toBe(PodSandboxState.NOTREADY);
    await cri.removePodSandbox(podId);
    await until(() => ourShims().length === 0, 15_000, "the shim to exit");
    expect(processAlive(sandbox!.pid)).toBe(false);
    expect(nanoKataState(podId)).toBeUndefined();
    expect(existsSync(join(c.dir, "state", "io.containerd.runtime.v2.task", CRI_NAMESPACE, podId))).toBe(false);
    expect(mountsUnder(c.dir).filter((m) => m.includes(podId) || m.includes(containerId))).toEqual([]);
    expect(leftCgroups().filter((g) => g.endsWith(`/${config.linux!.cgroupParent!.split("/").pop()}`))).toEqual([]);
  }, 90_000);

  test("StopContainer: SIGTERM reaches a handler; a process that ignores it is killed after the grace period", async () => {
    const config = podConfig("stop-pod");
    const podId = await runPod(config, docs.runtimeClassHandler);
    const trap: ContainerConfig = {
      metadata: { name: "trap" },
      image: IMAGE,
      command: ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"],
      logPath: "trap.log",
      linux: HOST_NETWORK,
    };
    // pid 1 of its own pid namespace with no handler: the kernel drops SIGTERM.
    const stubborn: ContainerConfig = { metadata: { name: "stubborn" }, image: IMAGE, command: ["sleep", "1000"], logPath: "stubborn.log", linux: HOST_NETWORK };
    const trapId = await cri.createContainer(podId, trap, config);
    const stubbornId = await cri.createContainer(podId, stubborn, config);
    await cri.startContainer(trapId);
    await cri.startContainer(stubbornId);
    expect(ourShims().length).toBe(1); // sandbox and both containers: one shim
    expect((await cri.containerStatus(stubbornId)).state).toBe(ContainerState.RUNNING);
    pidsSeen.push(nanoKataState(trapId)!.pid, nanoKataState(stubbornId)!.pid, nanoKataState(podId)!.pid);
    await until(() => existsSync(join(config.logDirectory!, "trap.log")) && readFileSync(join(config.logDirectory!, "trap.log"), "utf8").includes("ready"));

    await cri.stopContainer(trapId, 10);
    const trapped = await cri.containerStatus(trapId);
    expect(trapped.state).toBe(ContainerState.EXITED);
    expect(trapped.exitCode).toBe(7);
    expect(parseCriLog(join(config.logDirectory!, "trap.log")).map((l) => l.text)).toEqual(["ready", "got-term"]);

    const t0 = performance.now();
    await cri.stopContainer(stubbornId, 1);
    const elapsed = performance.now() - t0;
    const killed = await cri.containerStatus(stubbornId);
    expect(killed.state).toBe(ContainerState.EXITED);
    expect(killed.exitCode).toBe(137);
    expect(elapsed).toBeGreaterThanOrEqual(900);

    await cri.removeContainer(trapId);
    await cri.removeContainer(stubbornId);
    await cri.stopPodSandbox(podId);
    await cri.removePodSandbox(podId);
    await until(() => ourShims().length === 0, 15_000, "the shim to exit");
  }, 90_000);

  test("StopPodSandbox kills a running container; RemovePodSandbox removes it", async () => {
    const config = podConfig("busy-pod");
    const podId = await runPod(config, docs.runtimeClassHandler);
    const id = await cri.createContainer(podId, { metadata: { name: "sleeper" }, image: IMAGE, command: ["sleep", "1000"], logPath: "sleeper.log", linux: HOST_NETWORK }, config);
    await cri.startContainer(id);
    const pid = nanoKataState(id)!.pid;
    pidsSeen.push(pid, nanoKataState(podId)!.pid);
    expect(processAlive(pid)).toBe(true);
    await cri.stopPodSandbox(podId);
    expect(processAlive(pid)).toBe(false);
    expect((await cri.containerStatus(id)).state).toBe(ContainerState.EXITED);
    await cri.removePodSandbox(podId);
    expect(await cri.listContainers({ podSandboxId: podId })).toEqual([]);
    await until(() => ourShims().length === 0, 15_000, "the shim to exit");
  }, 90_000);

  test("the README's absolute-path handler (runtime_type = the shim's path) runs a pod", async () => {
    const config = podConfig("abs-pod");
    const podId = await runPod(config, ABS_HANDLER);
    expect((await cri.podSandboxStatus(podId)).runtimeHandler).toBe(ABS_HANDLER);
    expect(nanoKataState(podId)).toBeDefined();
    const id = await cri.createContainer(podId, { metadata: { name: "abs" }, image: IMAGE, command: ["echo", "by-path"], logPath: "abs.log", linux: HOST_NETWORK }, config);
    await cri.startContainer(id);
    await waitExited(id);
    expect(parseCriLog(join(config.logDirectory!, "abs.log")).map((l) => l.text)).toEqual(["by-path"]);
    await cri.removeContainer(id);
    await cri.stopPodSandbox(podId);
    await cri.removePodSandbox(podId);
    await until(() => ourShims().length === 0, 15_000, "the shim to exit");
  }, 90_000);

  test("runtime_path: containerd 1.6 ignores it (as docs/shim.md says)", async () => {
    const v = await cri.version();
    const config = podConfig("path-pod");
    const result = await runPod(config, HANDLER_BY_PATH).catch((e: unknown) => e);
    if (v.runtimeVersion.startsWith("1.6.")) {
      expect(result).toBeInstanceOf(CriError);
      expect((result as CriError).message).toContain("binary not installed");
    } else {
      // A newer containerd: the doc's statement about 1.6 no longer describes this daemon; runtime_path should work.
      expect(typeof result).toBe("string");
    }
  }, 60_000);

  test("both `ctr run` lines of the README", () => {
    expect(docs.ctrRuns.length).toBe(2);
    docs.ctrRuns.forEach((line, i) => {
      const args = line
        .replaceAll(DOC_PLACEHOLDER_ROOT, repoRoot())
        .split(/\s+/)
        .slice(1) // "ctr"
        .map((a) => (a === "docker.io/library/busybox:latest" ? IMAGE : a === "demo" ? `nk-cri-demo-${process.pid}-${i}` : a));
      const r = c.ctr(args);
      expect(r.stderr).toBe("");
      expect(r.stdout).toBe("hi\n");
      expect(r.code).toBe(0);
    });
  }, 60_000);

  test("README.md, once it carries the section, has the same snippets as docs/shim.md", () => {
    const readme = sectionBlocks(join(repoRoot(), "README.md"));
    const doc = sectionBlocks(join(repoRoot(), "docs", "shim.md"))!;
    expect(doc.length).toBeGreaterThanOrEqual(5);
    if (readme) expect(readme).toEqual(doc);
  });

  test("nothing is left behind: shims, processes, nano-kata state, task bundles, mounts, cgroups", async () => {
    await until(() => ourShims().length === 0, 15_000, "every shim to exit");
    expect(pidsSeen.length).toBeGreaterThan(0);
    expect(pidsSeen.filter(processAlive)).toEqual([]);
    for (const ns of [CRI_NAMESPACE, "default"]) {
      expect(isDirEmpty(join(c.shimRoot, ns))).toBe(true);
      expect(isDirEmpty(join(c.dir, "state", "io.containerd.runtime.v2.task", ns))).toBe(true);
    }
    expect(isDirEmpty(c.socketDir)).toBe(true);
    expect(mountsUnder(c.dir)).toEqual([]);
    expect(leftCgroups()).toEqual([]);
    expect(await cri.listContainers()).toEqual([]);
  }, 30_000);
});

// ------------------------------------------------------------ VM mode: one microVM per pod

const vmSkip = skip ?? vmSkipReason();
if (vmSkip && !skip) console.log(`CRI VM-mode e2e skipped: ${vmSkip}`);

(vmSkip ? describe.skip : describe)("Kubernetes CRI: a pod in one microVM (docs/shim.md's nanokata-vm RuntimeClass)", () => {
  let vc: CriContainerd;
  let vcri: CriClient;
  let holder: NetnsHolder;
  let vdocs: DocSnippets;
  let imageError = "";
  const pods: string[] = [];
  const groups: string[] = [];
  const ourVmShims = () => shimProcesses().filter((p) => p.cmdline.includes(vc.address)).map((p) => p.pid);
  // A pod's VM: qemu, started by the VM's host process, whose parent is our shim (a long
  // sandbox id moves the VM's sockets to a short directory, so its command line need not name vc.dir).
  const ppid = (pid: number) => Number(/^\d+ \(.*\) \S (\d+)/.exec(readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1] ?? 0);
  const ourQemus = () => {
    const shims = new Set(ourVmShims());
    return processesNaming("qemu-system-x86_64")
      .map((line) => Number(line.split(":")[0]))
      .filter((pid) => {
        try {
          return shims.has(ppid(ppid(pid)));
        } catch {
          return false;
        }
      });
  };

  beforeAll(async () => {
    imageError = ensureVmImage();
    vdocs = readDocSnippets();
    // The pods' CNI bridge lives in a network namespace of the test's, never in the host's.
    holder = await startNetnsHolder();
    vc = await startCriContainerd(vdocs.vm.handler, { env: { NK_VM_CACHE: VM_CACHE }, podNetwork: { enter: holder.enter } });
    vcri = await CriClient.connect(vc.criSocket);
  }, 600_000);

  afterAll(async () => {
    for (const id of pods) {
      await vcri?.stopPodSandbox(id).catch(() => {});
      await vcri?.removePodSandbox(id).catch(() => {});
    }
    vcri?.close();
    await vc?.stop();
    await holder?.stop();
    for (const g of groups) for (const h of cgroupHierarchies()) {
      try {
        rmdirSync(join(h, "nano-kata-test", g));
      } catch {}
    }
  }, 120_000);

  test("the pod's containers run in the sandbox's VM, on the pod's CNI network; nothing is left", async () => {
    expect(imageError).toBe("");
    expect(vdocs.vm.link).toBe(`ln -s ${DOC_PLACEHOLDER_ROOT}/bin/containerd-shim-nanokata-vm-v2 /usr/local/bin/containerd-shim-nanokata-vm-v2`);
    expect(vdocs.vm.runtimeClassHandler).toBe("nanokata-vm");
    const group = `nk-cri-vm-${process.pid}`;
    groups.push(group);
    const logDirectory = join(vc.dir, "pod-logs", "vm-pod");
    mkdirSync(logDirectory, { recursive: true });
    const own = { namespaces: { network: NamespaceMode.POD, pid: NamespaceMode.CONTAINER, ipc: NamespaceMode.POD } };
    const config: PodSandboxConfig = {
      metadata: { name: "vm-pod", uid: `uid-vm-${process.pid}`, namespace: "nk-test" },
      hostname: "vm-pod",
      logDirectory,
      linux: { cgroupParent: `/nano-kata-test/${group}`, namespaces: own.namespaces },
    };
    const podId = await vcri.runPodSandbox(config, vdocs.vm.runtimeClassHandler);
    pods.push(podId);
    expect((await vcri.podSandboxStatus(podId)).state).toBe(PodSandboxState.READY);
    const qemus = ourQemus();
    expect(qemus).toHaveLength(1);

    const show = ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; uname -r; hostname; ip -4 -o addr show eth0"];
    const first = await vcri.createContainer(podId, { metadata: { name: "first" }, image: IMAGE, command: show, logPath: "first.log", linux: own }, config);
    const second = await vcri.createContainer(podId, { metadata: { name: "second" }, image: IMAGE, command: show, logPath: "second.log", linux: own }, config);
    await vcri.startContainer(first);
    await vcri.startContainer(second);
    const firstExit = await (async () => {
      let s = await vcri.containerStatus(first);
      await until(async () => (s = await vcri.containerStatus(first)).state === ContainerState.EXITED, 60_000, "the first container to exit");
      return s;
    })();
    await until(async () => (await vcri.containerStatus(second)).state === ContainerState.EXITED, 60_000, "the second container to exit");
    expect(firstExit.exitCode).toBe(0);
    // Still one VM: the containers joined the sandbox's.
    expect(ourQemus()).toEqual(qemus);
    expect(ourVmShims()).toHaveLength(1);

    const lines = (name: string) => parseCriLog(join(logDirectory, `${name}.log`)).filter((l) => l.stream === "stdout").map((l) => l.text);
    const [bootA, kernel, hostname, addr] = lines("first");
    const [bootB] = lines("second");
    expect(bootA).toMatch(/^[0-9a-f-]{36}$/);
    expect(bootB).toBe(bootA!); // one guest kernel boot
    expect(kernel).not.toBe(release());
    expect(hostname).toBe("vm-pod"); // the sandbox's uts namespace, joined in the guest
    // The pod's CNI address, on the VM's network card (it mirrors the pod's eth0).
    expect(addr).toContain(`inet ${POD_SUBNET.split(".").slice(0, 3).join(".")}.`);

    await vcri.removeContainer(first);
    await vcri.removeContainer(second);
    await vcri.stopPodSandbox(podId);
    await vcri.removePodSandbox(podId);
    pods.splice(pods.indexOf(podId), 1);
    await until(() => ourVmShims().length === 0 && !processAlive(qemus[0]!), 30_000, "the shim and the VM to exit");
    expect(isDirEmpty(join(vc.shimRoot, CRI_NAMESPACE))).toBe(true);
    expect(isDirEmpty(join(vc.dir, "state", "io.containerd.runtime.v2.task", CRI_NAMESPACE))).toBe(true);
    expect(mountsUnder(vc.dir)).toEqual([]);
  }, 300_000);
});
