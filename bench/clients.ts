/**
 * Client benchmark (part of `npm run bench`, called by bench/lifecycle.ts):
 * the time of one
 *   podman run --rm --network none --runtime <R> IMAGE true
 *   docker run --rm --network none --runtime <R> IMAGE true
 * for each runtime R (nano-kata, runc, crun), median of N after one warm-up
 * (N = $NK_BENCH_N, default 10: a client run costs hundreds of ms). The
 * runtimes take turns run by run, so a change in the machine's load hits
 * them all alike. A runtime that fails here (crun cannot run on this hybrid
 * cgroup host) is listed as unavailable with the client's reason.
 *
 * The clients are set up the way the e2e suites set them up, with the
 * helpers of test/e2e/daemons.ts: podman with private --root/--runroot and a
 * private containers.conf; our own dockerd (private data/exec roots, socket,
 * its own private containerd) inside a private network namespace. Both name
 * the runtime binaries directly, not through the e2e suites' argv-logging
 * wrappers, whose shell would be timed too. `--network none` because network
 * setup (CNI, docker's bridge) is the client's cost, not the runtime's.
 *
 * Every container's cgroup is under /nano-kata-test/nkb-clients-<pid>, which
 * is removed at the end, with the images, containers, daemons (stopped by
 * pid) and work directories.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  DOCKER_HOST_PATHS,
  HostPaths,
  PODMAN_HOST_PATHS,
  RUNC,
  busyboxTar,
  cgroupTopLevel,
  cmd,
  containerdHostPaths,
  e2eSkipReason,
  leftoverCgroups,
  makeWorkDir,
  pidsMentioning,
  removeNewCgroupParents,
  removeScratch,
  runtimeUnderTest,
  startContainerd,
  startDaemon,
  startNetnsHolder,
  stopPids,
  sweepWorkDir,
  which,
  type CmdResult,
  type Containerd,
  type Daemon,
  type NetnsHolder,
} from "../test/e2e/daemons.ts";

/** A runtime as the clients know it: `name` is what --runtime says. */
interface Runtime {
  label: string;
  name: string;
  bin: string | null;
}

type ClientName = "podman" | "docker";
const CLIENTS: ClientName[] = ["podman", "docker"];

interface Measurement {
  runMs: number[];
  error?: string;
}

/** Per runtime label, per client: the timings, or why there are none. */
type Results = Map<string, Partial<Record<ClientName, Measurement>>>;

/**
 * A client ready to run containers: `run` times one `run --rm ... true`,
 * `tearDown` removes everything the client made and returns what leaked.
 */
interface Client {
  run(runtime: Runtime): CmdResult;
  tearDown(): Promise<string[]>;
}

class ClientBenchError extends Error {
  readonly code = "CLIENT_BENCH_FAILED";
}

const DEFAULT_N = 10;
const RUN_TIMEOUT_MS = 60_000;
const PODMAN_IMAGE = "localhost/nkb-busybox:latest";
const DOCKER_IMAGE = "nkb-busybox:latest";
/** Debian's client (20.10) first: it matches Debian's dockerd; a docker elsewhere on PATH may be a newer client. */
const DOCKER = which("/usr/bin/docker") ?? which("docker") ?? "docker";

function cgroupParentName(): string {
  return `nano-kata-test/nkb-clients-${process.pid}`;
}

function runtimes(): Runtime[] {
  return [
    { label: "nano-kata", name: "nanokata", bin: runtimeUnderTest() },
    { label: "runc", name: "runc-ref", bin: which(RUNC) },
    { label: "crun", name: "crun", bin: which("crun") },
  ];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function firstLine(text: string): string {
  return text.trim().split("\n").find((l) => l.trim() !== "") ?? "(no output)";
}

// ------------------------------------------------------------------ podman

async function startPodman(available: Runtime[]): Promise<Client> {
  const dir = makeWorkDir("bench-podman");
  const hostPaths = new HostPaths(PODMAN_HOST_PATHS);
  // As in test/e2e/podman.test.ts: lower default ulimits, because this host
  // lacks CAP_SYS_RESOURCE and podman's 1048576 cannot be set by any runtime.
  writeFileSync(
    join(dir, "containers.conf"),
    `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "${join(dir, "tmp")}"
runtime_supports_json = ["crun", "runc", "runc-ref", "nanokata"]

[engine.runtimes]
${available.map((r) => `${r.name} = ["${r.bin}"]`).join("\n")}
`,
  );
  writeFileSync(
    join(dir, "storage.conf"),
    `[storage]
driver = "${process.env.NK_E2E_STORAGE_DRIVER ?? "overlay"}"
graphroot = "${join(dir, "root")}"
runroot = "${join(dir, "runroot")}"
`,
  );
  const env = { ...process.env, CONTAINERS_CONF: join(dir, "containers.conf"), CONTAINERS_STORAGE_CONF: join(dir, "storage.conf") };
  const podman = (args: string[]): CmdResult =>
    cmd(["podman", "--root", join(dir, "root"), "--runroot", join(dir, "runroot"), "--cgroup-manager", "cgroupfs", "--events-backend", "file", ...args], {
      env,
      timeoutMs: RUN_TIMEOUT_MS,
    });
  const tearDown = async (): Promise<string[]> => {
    const problems: string[] = [];
    podman(["rm", "--all", "--force", "--time", "0"]);
    const left = podman(["ps", "--all", "--quiet"]).stdout.trim();
    if (left) problems.push(`podman containers left after rm --all: ${left}`);
    podman(["rmi", "--all", "--force"]);
    const images = podman(["images", "--quiet"]).stdout.trim();
    if (images) problems.push(`podman images left: ${images}`);
    problems.push(...hostPaths.cleanup());
    problems.push(...(await sweepWorkDir(dir)));
    return problems;
  };
  const imported = podman(["import", busyboxTar(dir), PODMAN_IMAGE]);
  if (imported.code !== 0) {
    const problems = await tearDown();
    throw new ClientBenchError(`podman import failed: ${firstLine(imported.stderr)}${problems.length ? ` (and on cleanup: ${problems.join("; ")})` : ""}`);
  }
  return {
    run: (r) => podman(["--runtime", r.name, "run", "--rm", "--network", "none", "--cgroup-parent", `/${cgroupParentName()}`, PODMAN_IMAGE, "true"]),
    tearDown,
  };
}

// ------------------------------------------------------------------ docker

async function startDocker(available: Runtime[]): Promise<Client> {
  const dir = makeWorkDir("bench-docker");
  const hostPaths = new HostPaths([...DOCKER_HOST_PATHS, ...containerdHostPaths("moby")]);
  let netns: NetnsHolder | undefined;
  let containerd: Containerd | undefined;
  let daemon: Daemon | undefined;
  const sock = join(dir, "docker.sock");
  const env = { ...process.env, DOCKER_CONFIG: join(dir, "client") };
  const docker = (args: string[], timeoutMs = RUN_TIMEOUT_MS): CmdResult => cmd([DOCKER, "-H", `unix://${sock}`, ...args], { env, timeoutMs });
  const tearDown = async (): Promise<string[]> => {
    const problems: string[] = [];
    if (daemon) {
      const ids = docker(["ps", "--all", "--quiet"]).stdout.trim().split("\n").filter(Boolean);
      if (ids.length) docker(["rm", "--force", ...ids]);
      const left = docker(["ps", "--all", "--quiet"]).stdout.trim();
      if (left) problems.push(`docker containers left after rm --force: ${left}`);
      docker(["rmi", "--force", DOCKER_IMAGE]);
      const images = docker(["images", "--quiet"]).stdout.trim();
      if (images) problems.push(`docker images left: ${images}`);
      problems.push(...(await daemon.stop()));
    }
    if (containerd) problems.push(...(await containerd.stop()));
    const stray = pidsMentioning(dir);
    if (stray.length) {
      problems.push(`processes left from ${dir}: ${stray.join(", ")}`);
      await stopPids(stray, 5_000);
    }
    await netns?.stop();
    problems.push(...hostPaths.cleanup());
    problems.push(...(await sweepWorkDir(dir)));
    return problems;
  };
  try {
    netns = await startNetnsHolder();
    // As in test/e2e/docker.test.ts: cgroupfs (no systemd here), ulimits
    // below the hard limits (no CAP_SYS_RESOURCE), a private key path.
    const config = {
      runtimes: Object.fromEntries(available.map((r) => [r.name, { path: r.bin }])),
      "exec-opts": ["native.cgroupdriver=cgroupfs"],
      "default-ulimits": { nofile: { Name: "nofile", Soft: 20000, Hard: 20000 }, nproc: { Name: "nproc", Soft: 32768, Hard: 32768 } },
      "storage-driver": process.env.NK_E2E_DOCKER_STORAGE_DRIVER ?? "overlay2",
      "deprecated-key-path": join(dir, "key.json"),
    };
    writeFileSync(join(dir, "daemon.json"), JSON.stringify(config, null, 2));
    containerd = await startContainerd(dir, netns.enter);
    const containerdAddress = containerd.address;
    daemon = await startDaemon(
      "dockerd",
      [
        ...netns.enter,
        "dockerd",
        "--config-file", join(dir, "daemon.json"),
        "--data-root", join(dir, "data"),
        "--exec-root", join(dir, "exec"),
        "--pidfile", join(dir, "dockerd.pid"),
        "--containerd", containerdAddress,
        "-H", `unix://${sock}`,
      ],
      join(dir, "dockerd.log"),
      () => docker(["version", "--format", "{{.Server.Version}}"], 10_000).code === 0,
      60_000,
    );
    const imported = docker(["import", busyboxTar(dir), DOCKER_IMAGE]);
    if (imported.code !== 0) throw new ClientBenchError(`docker import failed: ${firstLine(imported.stderr)}`);
  } catch (err) {
    const problems = await tearDown();
    const reason = err instanceof Error ? err.message : String(err);
    throw new ClientBenchError(problems.length ? `${reason} (and on cleanup: ${problems.join("; ")})` : reason);
  }
  return {
    run: (r) => docker(["run", "--rm", "--network", "none", "--runtime", r.name, "--cgroup-parent", `/${cgroupParentName()}`, DOCKER_IMAGE, "true"]),
    tearDown,
  };
}

// ------------------------------------------------------------------ bench

/** i = 0 is the warm-up; each round runs every runtime still working once, in turn. */
function benchClient(client: Client, clientName: ClientName, runtimesToRun: Runtime[], n: number, results: Results): void {
  const measured = runtimesToRun.map((r) => {
    const m: Measurement = { runMs: [] };
    results.get(r.label)![clientName] = m;
    return { runtime: r, m };
  });
  for (let i = 0; i <= n; i++) {
    for (const { runtime, m } of measured) {
      if (m.error) continue;
      const t0 = performance.now();
      const r = client.run(runtime);
      const ms = performance.now() - t0;
      if (r.code !== 0) {
        m.error = `${clientName} run exited ${r.code}${r.timedOut ? " (timed out)" : ""}: ${firstLine(r.stderr)}`;
      } else if (i > 0) {
        m.runMs.push(ms);
      }
    }
  }
}

function benchN(): number {
  const raw = process.env.NK_BENCH_N;
  const n = raw === undefined || raw === "" ? DEFAULT_N : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new ClientBenchError(`NK_BENCH_N must be a positive integer, got ${raw}`);
  return n;
}

function clientSkipReason(clientName: ClientName): string | null {
  if (clientName === "podman") return e2eSkipReason(["podman", "conmon"]);
  return e2eSkipReason(["dockerd", "containerd", "containerd-shim-runc-v2", "iptables", DOCKER]);
}

function printTable(results: Results, runtimeSkips: Map<string, string>, clientSkips: Map<ClientName, string>, log: (line: string) => void): void {
  const base = results.get("nano-kata")!;
  const ratio = (value: number, clientName: ClientName): string => {
    const nk = base[clientName];
    return nk && !nk.error && nk.runMs.length ? `${(value / median(nk.runMs)).toFixed(2)}x` : "n/a";
  };
  const widths = [12, 25, 7, 25, 7];
  const row = (cells: string[]): string => cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[0]!) : cell.padStart(widths[i]!))).join("  ");
  log("");
  log(row(["runtime", "podman run --rm median ms", "vs nk", "docker run --rm median ms", "vs nk"]));
  const notes: string[] = [];
  for (const [label, byClient] of results) {
    const cells = [label];
    let any = false;
    for (const clientName of CLIENTS) {
      const m = byClient[clientName];
      if (m && !m.error && m.runMs.length) {
        const med = median(m.runMs);
        cells.push(med.toFixed(1), ratio(med, clientName));
        any = true;
      } else {
        cells.push("-", "");
      }
    }
    if (any) log(row(cells));
    const errors = CLIENTS.flatMap((c) => (byClient[c]?.error ? [byClient[c]!.error!] : []));
    const skip = runtimeSkips.get(label);
    if (skip) errors.push(skip);
    if (errors.length) notes.push(`${label.padEnd(12)}  unavailable: ${[...new Set(errors)].join("; ")}`);
  }
  for (const [clientName, reason] of clientSkips) notes.push(`${clientName.padEnd(12)}  unavailable: ${reason}`);
  for (const note of notes) log(note);
  log("(ratio = that runtime's median / nano-kata's through the same client; below 1 means faster than nano-kata)");
}

/**
 * Runs the client benchmark and prints its table. 0 when nano-kata and runc
 * were measured through every installed client (a missing client or crun
 * failing here is reported, not an error).
 */
export async function runClientsBench(log: (line: string) => void): Promise<number> {
  const n = benchN();
  const all = runtimes();
  const results: Results = new Map(all.map((r) => [r.label, {}]));
  const clientSkips = new Map<ClientName, string>();
  const installed = all.filter((r) => r.bin !== null);
  const runtimeSkips = new Map(all.filter((r) => r.bin === null).map((r) => [r.label, `${r.label} is not installed`]));

  log("");
  log(`clients benchmark: \`podman|docker run --rm --network none --runtime <R> IMAGE true\`, N=${n} (+1 warm-up), the runtimes taking turns`);
  const cgroupsBefore = cgroupTopLevel();
  const cgroupParent = cgroupParentName();
  const problems: string[] = [];
  try {
    for (const clientName of CLIENTS) {
      const skip = clientSkipReason(clientName);
      if (skip) {
        clientSkips.set(clientName, skip);
        continue;
      }
      let client: Client;
      try {
        client = clientName === "podman" ? await startPodman(installed) : await startDocker(installed);
      } catch (err) {
        clientSkips.set(clientName, err instanceof Error ? err.message : String(err));
        continue;
      }
      try {
        benchClient(client, clientName, installed, n, results);
      } finally {
        problems.push(...(await client.tearDown()));
      }
    }
  } finally {
    // "conmon" is podman's own cgroup for its monitors (cgroupfs manager), not a container's.
    for (const dir of leftoverCgroups(cgroupParent, ["conmon"])) problems.push(`container cgroup left: ${dir}`);
    // Removed only if absent before (and empty: rmdir); the runtimes remove their own container cgroups.
    problems.push(...removeNewCgroupParents(cgroupsBefore, [cgroupParent, "libpod_parent", "docker"]));
    removeScratch();
  }
  printTable(results, runtimeSkips, clientSkips, log);
  for (const p of problems) log(`cleanup problem: ${p}`);
  const measured = (label: string): boolean =>
    CLIENTS.every((c) => clientSkips.has(c) || (results.get(label)![c] !== undefined && !results.get(label)![c]!.error));
  return measured("nano-kata") && measured("runc") && problems.length === 0 ? 0 : 1;
}
