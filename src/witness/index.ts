/**
 * The hub-side witness of edge audit logs (docs/audit.md): checks each checkpoint an edge
 * publishes against the edge's pinned key and the previous checkpoint, keeps the latest per
 * edge and serves it to `nops-kernel audit verify --checkpoint`.
 */
export {
  type CheckpointSubmission,
  type Witness,
  type WitnessedCheckpoint,
  type WitnessedEdge,
  type WitnessVerdict,
  createWitness,
} from "./witness.js";
export { type WitnessEdgeOptions, type WitnessOptions, hubStreamOf, resolveWitnessOptions } from "./witness-options.js";
export { type RunningWitness, startWitness } from "./witness-service.js";
