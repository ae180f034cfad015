/**
 * What the section validators share: the issue collector, the caller's options
 * and facts read from one section that rules in another depend on (hostname
 * needs a new UTS namespace, process.user.uid must be mapped, ...).
 */
import type { Checker } from "./check.ts";
import type { LinuxIDMapping, NamespaceType } from "./types.ts";

export interface ValidateOptions {
  /** Absolute bundle directory; a relative root.path is resolved against it. */
  bundle: string;
  /**
   * True when the spec is about to be used to create a container: process and
   * root become required and root.path must exist. False for commands that only
   * read a stored spec (state, delete), which must not fail on a host change.
   */
  forCreate: boolean;
}

export interface NamespaceEntry {
  /** Index in linux.namespaces, for messages. */
  index: number;
  /** Namespace file to join; undefined means "create a new namespace". */
  path: string | undefined;
}

export interface ValidationContext {
  check: Checker;
  options: ValidateOptions;
  /** Well-formed linux.namespaces entries by type (the first one when duplicated). */
  namespaces: Map<NamespaceType, NamespaceEntry>;
  /** linux.uidMappings / gidMappings when every entry was well-formed. */
  uidMappings: LinuxIDMapping[] | undefined;
  gidMappings: LinuxIDMapping[] | undefined;
}

export function hasNamespace(context: ValidationContext, type: NamespaceType): boolean {
  return context.namespaces.has(type);
}

/** True when the container gets a namespace of its own of this type (no path to join). */
export function hasNewNamespace(context: ValidationContext, type: NamespaceType): boolean {
  const entry = context.namespaces.get(type);
  return entry !== undefined && entry.path === undefined;
}
