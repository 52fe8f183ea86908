// The deployment files, checked without a docker engine: docker-compose.yml's
// structure, the Prometheus config, and the alerts of the failure spec naming
// only metrics the daemon exports.
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { Histogram } from "prom-client";
import { parse } from "yaml";
import { CONFIG_VARIABLES } from "../src/config.js";
import { createDb } from "../src/db/database.js";
import { createMetrics } from "../src/metrics.js";
import { silentLogger } from "../src/logger.js";
import { useTestDatabase } from "./fixture.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const read = async (file: string) => parse(await readFile(path.join(ROOT, file), "utf8")) as never;

interface Service {
  image?: string;
  build?: string;
  profiles?: string[];
  environment?: Record<string, string>;
  ports?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  volumes?: string[];
  command?: string[];
}

const t = useTestDatabase("http_deploy");
let exported: Set<string>;

beforeAll(async () => {
  const metrics = createMetrics({ db: createDb(t.pool), logger: silentLogger() });
  // A histogram is scraped as its _bucket, _sum and _count series.
  exported = new Set(
    metrics.registry
      .getMetricsAsArray()
      .flatMap((m) =>
        (m as unknown) instanceof Histogram
          ? [m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`]
          : [m.name],
      ),
  );
});

/** The metric names a PromQL expression reads: identifiers that are not functions, keywords or labels. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/\{[^}]*\}/g, " ") // label matchers
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ") // label lists
    .replace(/\[[^\]]*\]/g, " ") // ranges
    .replace(/"[^"]*"/g, " ");
  const keywords = new Set(["and", "or", "unless", "bool", "offset"]);
  return [...bare.matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()/g)]
    .map((m) => m[1]!)
    .filter((name) => !keywords.has(name));
}

describe("deploy/prometheus/alerts.yml", () => {
  it("has the failure spec's three alerts with their severities", async () => {
    const doc = await read("deploy/prometheus/alerts.yml");
    const rules = (
      doc as {
        groups: {
          rules: { alert: string; expr: string; for?: string; labels: { severity: string } }[];
        }[];
      }
    ).groups.flatMap((g) => g.rules);
    const byName = Object.fromEntries(rules.map((r) => [r.alert, r]));
    expect(byName.PgfnFunctionErrorRateHigh).toMatchObject({
      for: "5m",
      labels: { severity: "critical" },
    });
    expect(byName.PgfnFunctionErrorRateHigh!.expr).toMatch(/> 0\.10/);
    expect(byName.PgfnFunctionTimeoutRateHigh).toMatchObject({ labels: { severity: "warning" } });
    expect(byName.PgfnFunctionTimeoutRateHigh!.expr).toMatch(/> 0\.05/);
    expect(byName.PgfnFunctionMemoryLimitHit).toMatchObject({ labels: { severity: "info" } });
    for (const rule of rules) {
      expect(["critical", "warning", "info"]).toContain(rule.labels.severity);
    }
  });

  it("names only metrics the daemon exports", async () => {
    const doc = await read("deploy/prometheus/alerts.yml");
    const rules = (
      doc as { groups: { rules: { alert: string; expr: string }[] }[] }
    ).groups.flatMap((g) => g.rules);
    for (const rule of rules) {
      const names = metricNames(rule.expr);
      expect(names.length, rule.alert).toBeGreaterThan(0);
      for (const name of names) expect(exported, `${rule.alert} reads ${name}`).toContain(name);
    }
    // The checker itself: it finds the metric and nothing else.
    expect(metricNames('sum by (name) (rate(x_total{status="failed"}[5m])) / y > 0.1')).toEqual([
      "x_total",
      "y",
    ]);
  });
});

describe("docker-compose.yml", () => {
  it("runs Postgres 15 with a healthcheck, and pgfn once it is healthy", async () => {
    const { services } = (await read("docker-compose.yml")) as {
      services: Record<string, Service>;
    };
    expect(services.postgres!.image).toMatch(/^postgres:15/);
    expect(services.postgres!.healthcheck!.test.join(" ")).toMatch(/pg_isready/);
    const pgfn = services.pgfn!;
    expect(pgfn.build).toBe(".");
    expect(pgfn.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
    expect(pgfn.command).toEqual(["start", "--migrate"]);
    expect(pgfn.healthcheck!.test.join(" ")).toMatch(/readyz/);
  });

  it("configures pgfn only with variables pgfn reads, and publishes its HTTP port", async () => {
    const { services } = (await read("docker-compose.yml")) as {
      services: Record<string, Service>;
    };
    const env = services.pgfn!.environment!;
    for (const name of Object.keys(env)) expect(CONFIG_VARIABLES, name).toContain(name);
    expect(env.PGFN_ADMIN_TOKEN).toMatch(/^\$\{PGFN_ADMIN_TOKEN:\?/); // required, never a default
    const port = env.PGFN_HTTP_PORT!;
    expect(services.pgfn!.ports).toContain(`${port}:${port}`);
    expect(services.pgfn!.healthcheck!.test.join(" ")).toContain(`:${port}/readyz`);
  });

  it("runs Prometheus under a profile, scraping pgfn with the alerts loaded", async () => {
    const { services } = (await read("docker-compose.yml")) as {
      services: Record<string, Service>;
    };
    const prometheus = services.prometheus!;
    expect(prometheus.profiles).toEqual(["monitoring"]);
    const mounts = Object.fromEntries(
      prometheus.volumes!.map((v) => {
        const [from, to] = v.split(":");
        return [to!, from!];
      }),
    );
    for (const from of Object.values(mounts)) expect(existsSync(path.join(ROOT, from))).toBe(true);
    expect(mounts["/etc/prometheus/prometheus.yml"]).toBe("./deploy/prometheus/prometheus.yml");

    const config = (await read("deploy/prometheus/prometheus.yml")) as {
      rule_files: string[];
      scrape_configs: { metrics_path: string; static_configs: { targets: string[] }[] }[];
    };
    for (const file of config.rule_files) expect(Object.keys(mounts)).toContain(file);
    const port = services.pgfn!.environment!.PGFN_HTTP_PORT;
    expect(config.scrape_configs[0]).toMatchObject({
      metrics_path: "/metrics",
      static_configs: [{ targets: [`pgfn:${port}`] }],
    });
  });
});

describe("Dockerfile", () => {
  it("exposes the HTTP port and starts the daemon", async () => {
    const text = await readFile(path.join(ROOT, "Dockerfile"), "utf8");
    expect(text).toMatch(/^EXPOSE 7780$/m);
    expect(text).toMatch(/^CMD \["start", "--migrate"\]$/m);
  });
});
