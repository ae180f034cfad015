/**
 * The one error class of the spec area. `code` is stable so the CLI (and tests)
 * can branch on it without parsing the message.
 */

export type SpecErrorCode = "invalid-spec" | "spec-not-found" | "spec-parse";

/** One problem found in a config.json, located by its JSON path ("process.args[0]"). */
export interface SpecIssue {
  path: string;
  message: string;
}

/** Renders an issue the way every nano-kata diagnostic does: `path: message`. */
export function formatIssue(issue: SpecIssue): string {
  return issue.path === "" ? issue.message : `${issue.path}: ${issue.message}`;
}

export class SpecError extends Error {
  override readonly name = "SpecError";
  readonly code: SpecErrorCode;
  readonly issues: SpecIssue[];

  constructor(code: SpecErrorCode, message: string, issues: SpecIssue[] = [], options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.issues = issues;
  }

  /** An invalid-spec error whose message lists every issue, one per line. */
  static invalid(issues: SpecIssue[]): SpecError {
    return new SpecError("invalid-spec", issues.map(formatIssue).join("\n"), issues);
  }
}

export function isSpecError(value: unknown): value is SpecError {
  return value instanceof SpecError;
}
