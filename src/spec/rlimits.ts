/**
 * POSIX resource limit names as runtime-spec writes them and their resource
 * numbers for setrlimit(2)/prlimit(2) from <asm-generic/resource.h>.
 *
 * These are the numbers of x86_64, arm64, riscv64, s390x and ppc64; mips, sparc
 * and alpha renumber a few (NOFILE, AS, RSS, NPROC, MEMLOCK) and are not supported.
 */
export const RLIMIT_NUMBERS = {
  RLIMIT_CPU: 0,
  RLIMIT_FSIZE: 1,
  RLIMIT_DATA: 2,
  RLIMIT_STACK: 3,
  RLIMIT_CORE: 4,
  RLIMIT_RSS: 5,
  RLIMIT_NPROC: 6,
  RLIMIT_NOFILE: 7,
  RLIMIT_MEMLOCK: 8,
  RLIMIT_AS: 9,
  RLIMIT_LOCKS: 10,
  RLIMIT_SIGPENDING: 11,
  RLIMIT_MSGQUEUE: 12,
  RLIMIT_NICE: 13,
  RLIMIT_RTPRIO: 14,
  RLIMIT_RTTIME: 15,
} as const;

export type RlimitName = keyof typeof RLIMIT_NUMBERS;

/** Every known rlimit name, ordered by number. */
export function allRlimitNames(): RlimitName[] {
  return Object.keys(RLIMIT_NUMBERS) as RlimitName[];
}

export function isKnownRlimit(name: string): name is RlimitName {
  return Object.hasOwn(RLIMIT_NUMBERS, name);
}

/** Resource number of an rlimit name, or undefined when the name is unknown. */
export function rlimitNumber(name: string): number | undefined {
  return isKnownRlimit(name) ? RLIMIT_NUMBERS[name] : undefined;
}
