// Validates custom resources (KEDA, Prometheus Operator) against validators
// generated from their CRDs' OpenAPI schemas by the @kubernetes-models packages.
// They check types, required fields and enums; like the API server's pruning,
// they do not reject unknown fields.
//
// usage: node crds.mjs NODE_MODULES_DIR < docs.json   (a JSON array of objects)
// prints one JSON array of problems (strings); exits 0 either way.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/TriggerAuthentication":
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
};

const modules = process.argv[2];
const docs = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
for (const doc of docs) {
  const id = `${doc.apiVersion}/${doc.kind}`;
  const where = `${doc.kind}/${doc.metadata?.name}`;
  const path = MODELS[id];
  if (!path) {
    problems.push(`${where}: no CRD schema known for ${id}`);
    continue;
  }
  const model = await import(pathToFileURL(join(modules, path)).href);
  try {
    new model[doc.kind](doc).validate();
  } catch (error) {
    problems.push(`${where}: ${error.message}`);
  }
}
process.stdout.write(JSON.stringify(problems));
