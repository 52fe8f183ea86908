export const HANDLER_FLAGS: readonly string[];
export function exampleNames(): string[];
export function examplePath(name: string): string;
export function buildExamples(options?: { quiet?: boolean }): Promise<void>;
