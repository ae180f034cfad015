/**
 * linux.resources.devices -> cgroup v1 devices.allow / devices.deny writes.
 *
 * The v1 devices controller keeps a default behaviour plus an exception list.
 * Writing "a" to devices.deny switches to deny-all and clears the exceptions;
 * then each spec rule, in spec order, adds an allow or deny exception. A rule
 * line is "<type> <major>:<minor> <access>" with "*" for any number
 * (Documentation/admin-guide/cgroup-v1/devices.rst).
 *
 * cgroup v2 has no devices files: access is checked by an eBPF program
 * attached to the cgroup (BPF_CGROUP_DEVICE). That compiler is a separate
 * piece of work (src/cgroups/ v2 devices, see DESIGN.md); until it lands the
 * v2 driver does not enforce device rules.
 */
import type { LinuxDeviceCgroup } from "../spec/types.ts";
import { CgroupError } from "./errors.ts";

export interface DeviceWrite {
  file: "devices.allow" | "devices.deny";
  value: string;
  field: string;
}

const FIELD = "linux.resources.devices";

function deviceNumber(value: number | undefined, field: string): string {
  if (value === undefined || value === -1) return "*";
  if (!Number.isInteger(value) || value < 0) {
    throw new CgroupError("cgroup-resource-invalid", `${field}: ${JSON.stringify(value)} is not a device number`);
  }
  return String(value);
}

function deviceAccess(access: string | undefined, field: string): string {
  // An absent or empty access means all of read, write and mknod, as runc reads it.
  if (access === undefined || access === "") return "rwm";
  if (!/^[rwm]{1,3}$/.test(access) || new Set(access).size !== access.length) {
    throw new CgroupError("cgroup-resource-invalid", `${field}.access: ${JSON.stringify(access)} must combine r, w and m`);
  }
  return access;
}

/**
 * The ordered writes that make a device cgroup enforce `rules`, starting from
 * deny-all. Each output line carries the index of the rule it came from.
 */
export function deviceRulesToV1Writes(rules: readonly LinuxDeviceCgroup[]): DeviceWrite[] {
  const writes: DeviceWrite[] = [{ file: "devices.deny", value: "a", field: FIELD }];
  rules.forEach((rule, index) => {
    const field = `${FIELD}[${index}]`;
    const type = rule.type ?? "a";
    if (type !== "a" && type !== "b" && type !== "c") {
      throw new CgroupError("cgroup-resource-invalid", `${field}.type: ${JSON.stringify(type)} must be "a", "b" or "c"`);
    }
    const major = deviceNumber(rule.major, `${field}.major`);
    const minor = deviceNumber(rule.minor, `${field}.minor`);
    const access = deviceAccess(rule.access, field);
    const file = rule.allow ? "devices.allow" : "devices.deny";

    if (type === "a" && major === "*" && minor === "*" && access === "rwm") {
      // The one form the kernel takes for "a": it flips the default behaviour
      // (allow-all or deny-all) and drops every exception.
      writes.push({ file, value: "a", field });
      return;
    }
    // The kernel treats any "a ..." line as the whole-behaviour switch above,
    // ignoring numbers and access, so a narrower "all types" rule would grant
    // or deny far more than written. Spell it out for both device types.
    const types = type === "a" ? ["c", "b"] : [type];
    for (const t of types) writes.push({ file, value: `${t} ${major}:${minor} ${access}`, field });
  });
  return writes;
}

/**
 * The device rules runc grants every container on top of the spec's
 * (runtime-spec config-linux.md "Default Devices", plus /dev/pts/* and
 * /dev/ptmx for terminals). The planner appends these to the spec rules; they
 * are kept here because they are cgroup policy.
 */
export const DEFAULT_ALLOWED_DEVICE_RULES: readonly LinuxDeviceCgroup[] = [
  { allow: true, type: "c", major: 1, minor: 3, access: "rwm" }, // /dev/null
  { allow: true, type: "c", major: 1, minor: 5, access: "rwm" }, // /dev/zero
  { allow: true, type: "c", major: 1, minor: 7, access: "rwm" }, // /dev/full
  { allow: true, type: "c", major: 1, minor: 8, access: "rwm" }, // /dev/random
  { allow: true, type: "c", major: 1, minor: 9, access: "rwm" }, // /dev/urandom
  { allow: true, type: "c", major: 5, minor: 0, access: "rwm" }, // /dev/tty
  { allow: true, type: "c", major: 5, minor: 2, access: "rwm" }, // /dev/ptmx
  { allow: true, type: "c", major: 136, access: "rwm" }, // /dev/pts/*
];
