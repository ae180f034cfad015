import { readFileSync } from "node:fs";
import type { Verb } from "../main.ts";
import { exactArgs, runtimeContext } from "../context.ts";
import { updateContainer } from "../../linux/operations.ts";
import type { LinuxResources } from "../../spec/types.ts";
import { parseInteger, parseSize } from "../units.ts";
import { UsageError } from "../../util/errors.ts";

const update: Verb = {
  summary: "change the resource limits of a running container",
  usage: "[options] <container-id>",
  flags: [
    { name: "resources", short: "r", kind: "string", value: "FILE", help: "linux.resources JSON from FILE (- for stdin)" },
    { name: "memory", short: "m", kind: "string", value: "BYTES", help: "memory limit (e.g. 256m; -1 unlimited)" },
    { name: "memory-reservation", kind: "string", value: "BYTES", help: "memory soft limit" },
    { name: "memory-swap", kind: "string", value: "BYTES", help: "memory + swap limit" },
    { name: "kernel-memory", kind: "string", value: "BYTES", help: "accepted for runc compatibility; ignored (deprecated in the kernel)" },
    { name: "kernel-memory-tcp", kind: "string", value: "BYTES", help: "accepted for runc compatibility; ignored" },
    { name: "cpu-shares", kind: "string", value: "N", help: "relative CPU weight (v1 shares)" },
    { name: "cpu-quota", kind: "string", value: "USEC", help: "CPU time per period (-1 unlimited)" },
    { name: "cpu-period", kind: "string", value: "USEC", help: "CFS period" },
    { name: "cpu-rt-runtime", kind: "string", value: "USEC", help: "realtime runtime per period" },
    { name: "cpu-rt-period", kind: "string", value: "USEC", help: "realtime period" },
    { name: "cpuset-cpus", kind: "string", value: "LIST", help: "CPUs allowed (e.g. 0-1)" },
    { name: "cpuset-mems", kind: "string", value: "LIST", help: "memory nodes allowed" },
    { name: "pids-limit", kind: "string", value: "N", help: "maximum number of processes (-1 or 0 unlimited)" },
    { name: "blkio-weight", kind: "string", value: "N", help: "block IO weight (10-1000)" },
  ],
  async run(global, flags, args) {
    exactArgs("update", args, 1);
    let resources: LinuxResources = {};
    if (flags.resources) {
      const path = flags.resources as string;
      const text = readFileSync(path === "-" ? 0 : path, "utf8");
      try {
        resources = JSON.parse(text) as LinuxResources;
      } catch (e) {
        throw new UsageError(`--resources ${path}: invalid JSON: ${(e as Error).message}`);
      }
    }
    const str = (name: string) => flags[name] as string | undefined;
    const memory = { ...(resources.memory ?? {}) };
    if (str("memory")) memory.limit = parseSize(str("memory")!, "--memory");
    if (str("memory-reservation")) memory.reservation = parseSize(str("memory-reservation")!, "--memory-reservation");
    if (str("memory-swap")) memory.swap = parseSize(str("memory-swap")!, "--memory-swap");
    if (Object.keys(memory).length) resources.memory = memory;
    const cpu = { ...(resources.cpu ?? {}) };
    if (str("cpu-shares")) cpu.shares = parseInteger(str("cpu-shares")!, "--cpu-shares");
    if (str("cpu-quota")) cpu.quota = parseInteger(str("cpu-quota")!, "--cpu-quota");
    if (str("cpu-period")) cpu.period = parseInteger(str("cpu-period")!, "--cpu-period");
    if (str("cpu-rt-runtime")) cpu.realtimeRuntime = parseInteger(str("cpu-rt-runtime")!, "--cpu-rt-runtime");
    if (str("cpu-rt-period")) cpu.realtimePeriod = parseInteger(str("cpu-rt-period")!, "--cpu-rt-period");
    if (str("cpuset-cpus")) cpu.cpus = str("cpuset-cpus");
    if (str("cpuset-mems")) cpu.mems = str("cpuset-mems");
    if (Object.keys(cpu).length) resources.cpu = cpu;
    if (str("pids-limit")) resources.pids = { limit: parseInteger(str("pids-limit")!, "--pids-limit") };
    if (str("blkio-weight")) resources.blockIO = { ...(resources.blockIO ?? {}), weight: parseInteger(str("blkio-weight")!, "--blkio-weight") };
    await updateContainer(runtimeContext(global), args[0]!, resources);
    return 0;
  },
};
export default update;
