/**
 * Which Linux security modules this host enforces, for the planner's
 * process.apparmorProfile, process.selinuxLabel and linux.mountLabel
 * decisions (src/plan/build.ts). Read when a container is created or
 * exec'd, never at import time.
 */
import { existsSync, readFileSync } from "node:fs";
import type { LsmFacts } from "../plan/build.ts";

/** Where the facts come from (tests point these at a temp dir). */
export interface LsmProbePaths {
  /** "Y" when the AppArmor module is enabled. */
  apparmorEnabled: string;
  /** AppArmor's securityfs directory (runc's other condition). */
  apparmorSecurityfs: string;
  /** The per-LSM attr directory of Linux 5.8+; without it AppArmor uses the shared /proc/self/attr/exec. */
  apparmorAttrDir: string;
  /** Present when selinuxfs is mounted, i.e. SELinux is on (enforcing or permissive). */
  selinuxEnforce: string;
}

export const HOST_LSM_PATHS: LsmProbePaths = {
  apparmorEnabled: "/sys/module/apparmor/parameters/enabled",
  apparmorSecurityfs: "/sys/kernel/security/apparmor",
  apparmorAttrDir: "/proc/self/attr/apparmor",
  selinuxEnforce: "/sys/fs/selinux/enforce",
};

export function detectLsm(paths: LsmProbePaths = HOST_LSM_PATHS): LsmFacts {
  let moduleEnabled = false;
  try {
    moduleEnabled = readFileSync(paths.apparmorEnabled, "utf8").startsWith("Y");
  } catch {
    // No such parameter: AppArmor is not built in.
  }
  const attrDir = existsSync(paths.apparmorAttrDir);
  return {
    apparmor: moduleEnabled && (attrDir || existsSync(paths.apparmorSecurityfs)),
    apparmorExecAttr: attrDir ? "apparmor/exec" : "exec",
    selinux: existsSync(paths.selinuxEnforce),
  };
}

/** One line for --debug. */
export function describeLsm(lsm: LsmFacts): string {
  const apparmor = lsm.apparmor ? `AppArmor enabled (profiles via /proc/self/attr/${lsm.apparmorExecAttr})` : "AppArmor not enabled";
  const selinux = lsm.selinux ? "SELinux enabled" : "SELinux not enabled";
  return `lsm: ${apparmor}; ${selinux}`;
}
