import { NanoKataError } from "../util/errors.ts";

/** The spec asks for something the planner cannot turn into operations. */
export class PlanError extends NanoKataError {}
