/**
 * uid/gid mapping lists, used by linux.uidMappings/gidMappings and by id-mapped
 * mounts (mounts[i].uidMappings). The rules are the kernel's rules for
 * /proc/<pid>/uid_map (user_namespaces(7)), checked here so a bad config fails
 * with a field path instead of an EINVAL from a write deep in `create`.
 */
import { type Checker, UINT32, field, indexPath, type JsonObject } from "./check.ts";
import type { LinuxIDMapping } from "./types.ts";

/** Linux 4.15+ accepts at most 340 lines in a uid_map or gid_map. */
export const MAX_ID_MAP_LINES = 340;

const ID_SPACE = 2 ** 32;

/**
 * Validates an optional mapping array at `path`. Returns the mappings when all
 * entries are well-formed, undefined when absent or broken.
 */
export function validateIdMappings(check: Checker, path: string, value: unknown): LinuxIDMapping[] | undefined {
  if (value === undefined || !check.isArray(path, value)) return undefined;
  if (value.length > MAX_ID_MAP_LINES) {
    check.report(path, `has ${value.length} entries; the kernel accepts at most ${MAX_ID_MAP_LINES}`);
  }
  const mappings: LinuxIDMapping[] = [];
  let ok = true;
  value.forEach((element, i) => {
    const mapping = validateIdMapping(check, indexPath(path, i), element);
    if (mapping === undefined) ok = false;
    else mappings.push(mapping);
  });
  if (!ok) return undefined;
  reportOverlaps(check, path, mappings, "containerID", "container IDs");
  reportOverlaps(check, path, mappings, "hostID", "host IDs");
  return mappings;
}

function validateIdMapping(check: Checker, path: string, value: unknown): LinuxIDMapping | undefined {
  if (!check.isObject(path, value)) return undefined;
  const containerID = check.requiredInteger(value, path, "containerID", UINT32);
  const hostID = check.requiredInteger(value, path, "hostID", UINT32);
  const size = check.requiredInteger(value, path, "size", UINT32);
  if (containerID === undefined || hostID === undefined || size === undefined) return undefined;
  if (size === 0) {
    check.report(`${path}.size`, "must be greater than 0");
    return undefined;
  }
  if (containerID + size > ID_SPACE || hostID + size > ID_SPACE) {
    check.report(path, `range of ${size} IDs runs past 4294967295`);
    return undefined;
  }
  return { containerID, hostID, size };
}

/** The kernel refuses overlapping ranges on either side of a map. */
function reportOverlaps(
  check: Checker,
  path: string,
  mappings: LinuxIDMapping[],
  side: "containerID" | "hostID",
  words: string,
): void {
  for (let i = 1; i < mappings.length; i++) {
    const current = mappings[i]!;
    for (let j = 0; j < i; j++) {
      const earlier = mappings[j]!;
      const overlaps = current[side] < earlier[side] + earlier.size && earlier[side] < current[side] + current.size;
      if (overlaps) {
        const last = current[side] + current.size - 1;
        check.report(indexPath(path, i), `${words} ${current[side]}-${last} overlap ${indexPath(path, j)}`);
        break;
      }
    }
  }
}

/** True when `id` falls inside one of the container-side ranges. */
export function isMappedInContainer(mappings: readonly LinuxIDMapping[], id: number): boolean {
  return mappings.some((m) => id >= m.containerID && id < m.containerID + m.size);
}

/** Reads a mount's or linux's pair of mapping arrays. */
export function readMappingPair(
  check: Checker,
  object: JsonObject,
  path: string,
): { uid: LinuxIDMapping[] | undefined; gid: LinuxIDMapping[] | undefined; uidGiven: boolean; gidGiven: boolean } {
  const uidValue = field(object, "uidMappings");
  const gidValue = field(object, "gidMappings");
  return {
    uid: validateIdMappings(check, `${path}.uidMappings`, uidValue),
    gid: validateIdMappings(check, `${path}.gidMappings`, gidValue),
    uidGiven: Array.isArray(uidValue) && uidValue.length > 0,
    gidGiven: Array.isArray(gidValue) && gidValue.length > 0,
  };
}
