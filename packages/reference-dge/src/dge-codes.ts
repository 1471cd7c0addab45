import { EgressClass, PiiType, Tier } from "../../../gen/nops/dge/v1/dge_pb.js";
import type { PiiKind } from "./pii-kinds.js";

/** Egress class names as config and events spell them. */
export const EGRESS_CLASS_NAMES = ["D0", "D1", "D2", "D3", "D4"] as const;
/** One of EGRESS_CLASS_NAMES. */
export type EgressClassName = (typeof EGRESS_CLASS_NAMES)[number];
/** A tenant tier as config spells it. */
export type TierName = 1 | 2 | 3 | "air-gapped";

const KIND_TO_TYPE: Record<PiiKind, PiiType> = {
  email: PiiType.EMAIL,
  credit_card: PiiType.CREDIT_CARD,
  us_ssn: PiiType.US_SSN,
  iban: PiiType.IBAN,
  phone: PiiType.PHONE,
  ip_address: PiiType.IP_ADDRESS,
  api_secret: PiiType.API_SECRET,
  us_itin: PiiType.US_ITIN,
  us_passport: PiiType.US_PASSPORT,
  uk_nino: PiiType.UK_NINO,
  mac_address: PiiType.MAC_ADDRESS,
  crypto_wallet: PiiType.CRYPTO_WALLET,
};

/** The proto PiiType of a classifier kind. */
export function piiTypeOf(kind: PiiKind): PiiType {
  return KIND_TO_TYPE[kind];
}

/**
 * The class each kind puts data in: contact and device data D2 (email, phone, public IP, MAC),
 * government and financial identifiers D3 (SSN, ITIN, passport, NINO, IBAN, crypto wallet),
 * cardholder data and credentials D4 (PCI DSS treats the PAN as the most protected element).
 */
export const KIND_CLASS: Readonly<Record<PiiKind, EgressClass>> = {
  email: EgressClass.D2,
  phone: EgressClass.D2,
  ip_address: EgressClass.D2,
  mac_address: EgressClass.D2,
  us_ssn: EgressClass.D3,
  us_itin: EgressClass.D3,
  us_passport: EgressClass.D3,
  uk_nino: EgressClass.D3,
  iban: EgressClass.D3,
  crypto_wallet: EgressClass.D3,
  credit_card: EgressClass.D4,
  api_secret: EgressClass.D4,
};

/** The proto class of "D0".."D4". */
export function egressClassOf(name: EgressClassName): EgressClass {
  return EgressClass.D0 + EGRESS_CLASS_NAMES.indexOf(name);
}

/** The proto tier of a config tier. */
export function tierOf(tier: TierName): Tier {
  return tier === "air-gapped" ? Tier.TIER_AIR_GAPPED : Tier.TIER_1 + tier - 1;
}

/** The config tier of a proto tier (undefined when unspecified). */
export function tierNameOf(tier: Tier): TierName | undefined {
  switch (tier) {
    case Tier.TIER_1:
      return 1;
    case Tier.TIER_2:
      return 2;
    case Tier.TIER_3:
      return 3;
    case Tier.TIER_AIR_GAPPED:
      return "air-gapped";
    default:
      return undefined;
  }
}
