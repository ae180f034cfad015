/**
 * linux.resources inside the guest. The VM's size is the outer limit (see
 * vmSize); the same limits also apply to the container within the guest, in
 * the cgroup v2 directory the agent made at boot (nk.cgroup=). The values come
 * from container mode's v2 driver (src/cgroups/v2.ts), run against a
 * recording ControlFiles: its writes become WRITE_FILE ops that stage0 carries
 * out in the guest before CLONE, ending with "0" into cgroup.procs (stage0
 * moves itself in; the container's init, cloned next, starts there).
 */
import { ControlFiles, type ControlWrite } from "../cgroups/control-files.ts";
import { applyPids } from "../cgroups/shared.ts";
import { applyV2Cpu, applyV2Memory, applyV2Unified } from "../cgroups/v2.ts";
import { OpCode, Section, type PlanOp } from "../plan/ops.ts";
import type { LinuxResources } from "../spec/types.ts";
import { GUEST_CGROUP } from "./config.ts";

/** Plans control-file writes instead of making them; every file is taken to exist (a fresh v2 cgroup). */
class RecordingControlFiles extends ControlFiles {
  readonly writes: ControlWrite[] = [];
  override has(): boolean {
    return true;
  }
  override read(): string | undefined {
    return undefined;
  }
  override write(dir: string, file: string, value: string, field: string): void {
    this.writes.push({ path: `${dir}/${file}`, value, field });
  }
  override writeIfPresent(dir: string, file: string, value: string, field: string): boolean {
    this.write(dir, file, value, field);
    return true;
  }
}

const CGROUP_ROOT = GUEST_CGROUP.slice(0, GUEST_CGROUP.lastIndexOf("/"));

export function guestCgroupOps(resources: LinuxResources | undefined): { ops: PlanOp[]; notes: string[] } {
  const io = new RecordingControlFiles();
  const notes: string[] = [];
  const r = resources ?? {};
  if (r.memory) applyV2Memory(io, GUEST_CGROUP, r.memory, false);
  if (r.cpu && (r.cpu.shares || r.cpu.quota || r.cpu.period || r.cpu.burst !== undefined || r.cpu.idle !== undefined)) applyV2Cpu(io, GUEST_CGROUP, r.cpu, false);
  if (r.pids) applyPids(io, GUEST_CGROUP, r.pids);
  if (r.unified && Object.keys(r.unified).length) applyV2Unified(io, GUEST_CGROUP, r.unified);
  const ignored = [
    r.cpu?.cpus || r.cpu?.mems ? "cpu.cpus/mems (host CPU numbers; the VM's vCPU count comes from them)" : "",
    r.blockIO ? "blockIO (the guest's disks are not the host's)" : "",
    r.hugepageLimits?.length ? "hugepageLimits" : "",
    r.rdma && Object.keys(r.rdma).length ? "rdma" : "",
    r.network ? "network" : "",
  ].filter(Boolean);
  if (ignored.length) notes.push(`linux.resources: not applied in the guest: ${ignored.join(", ")}`);

  // memory and pids always, for accounting: `events --stats` and the shim's metrics read memory.current and
  // pids.current, which exist only where the controller is enabled. Both guest kernels have them.
  const written = io.writes.map((w) => w.path.slice(GUEST_CGROUP.length + 1).split(".")[0]!);
  const controllers = [...new Set(["memory", "pids", ...written])].filter((c) => c !== "cgroup");
  const op = (path: string, content: string, source: string): PlanOp => ({ code: OpCode.WRITE_FILE, section: Section.Pre, args: [path, content], source });
  const ops: PlanOp[] = [];
  if (controllers.length) ops.push(op(`${CGROUP_ROOT}/cgroup.subtree_control`, controllers.map((c) => `+${c}`).join(" "), "linux.resources (guest: enable controllers)"));
  for (const w of io.writes) ops.push(op(w.path, w.value, w.field));
  ops.push(op(`${GUEST_CGROUP}/cgroup.procs`, "0", "linux.cgroupsPath (guest: the container's cgroup)"));
  return { ops, notes };
}
