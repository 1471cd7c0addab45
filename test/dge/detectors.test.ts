import test from "ava";
import { cardBrand, IBAN_LENGTHS, luhnCheckDigit } from "../../packages/reference-dge/src/checksums.js";
import { csvHeaderOf, insideHexId, internalAddress } from "../../packages/reference-dge/src/detectors/guards.js";
import {
  detectIdentifiers,
  ethAddressValid,
  itinGroupValid,
} from "../../packages/reference-dge/src/detectors/identifiers.js";
import { detectPhones } from "../../packages/reference-dge/src/detectors/phone.js";
import { placeholderValue } from "../../packages/reference-dge/src/detectors/secrets.js";
import { detectPii } from "../../packages/reference-dge/src/pii-classifier.js";

const withCheck = (payload: string): string => payload + luhnCheckDigit(payload);

test("checksums - UnionPay, Mir and Maestro ranges and lengths; IBAN registry has 89 countries", (t) => {
  t.is(cardBrand(withCheck("621234567890123")), "unionpay");
  t.is(cardBrand(withCheck("220312345678901")), "mir");
  t.is(cardBrand(withCheck("676112345678901")), "maestro");
  t.is(cardBrand(withCheck("22051234567890")), undefined);
  t.is(Object.keys(IBAN_LENGTHS).length, 89);
  t.is(IBAN_LENGTHS.RU, 33);
  t.is(IBAN_LENGTHS.LC, 32);
});

test("identifiers - ITIN groups, NINO prefixes, MAC placeholders, wallet checksums", (t) => {
  t.true(itinGroupValid(70) && itinGroupValid(94) && !itinGroupValid(93) && !itinGroupValid(66));
  const kinds = (s: string): string[] => detectIdentifiers(s).map((d) => d.kind);
  t.deepEqual(kinds("NINO AB 12 34 56 C"), ["uk_nino"]);
  t.deepEqual(kinds("NINO QQ 12 34 56 C, GB123456A, AB123456E"), []);
  t.deepEqual(kinds("mac 00:00:00:00:00:00 and ff:ff:ff:ff:ff:ff"), []);
  t.deepEqual(kinds("mac 3c:22:fb:01:9a:7e"), ["mac_address"]);
  t.true(ethAddressValid("0x52908400098527886E0F7030069857D2E4169EE7"));
  t.false(ethAddressValid("0x52908400098527886e0F7030069857D2E4169EE7"));
  t.deepEqual(kinds("pay 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"), ["crypto_wallet"]);
  t.deepEqual(kinds("pay 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3"), []);
  t.deepEqual(kinds("passport: 123456789"), ["us_passport"]);
  t.deepEqual(kinds("invoice 123456789"), []);
});

test("phones - international with +, 00 and 011; national in a region's grouping; reference numbers are not phones", (t) => {
  const found = (s: string): string[] => detectPhones(s).map((d) => s.slice(d.start, d.end));
  t.deepEqual(found("call +44 20 7946 0958"), ["+44 20 7946 0958"]);
  t.deepEqual(found("dial 0049 30 12345678"), ["0049 30 12345678"]);
  t.deepEqual(found("from the US: 011 33 1 42 68 53 00"), ["011 33 1 42 68 53 00"]);
  t.deepEqual(found("office 020 7946 0958"), ["020 7946 0958"]);
  t.deepEqual(found("imei=011622963686348"), []);
  t.deepEqual(found("zip 07687-6545"), []);
  t.deepEqual(found("invoice 4155552671"), []);
});

test("guards - internal addresses, hex ids and CSV headers", (t) => {
  for (const a of ["10.0.0.7", "127.0.0.1", "192.168.1.1", "172.20.0.1", "100.64.0.1", "fd00::7", "fe80::1", "::1"])
    t.true(internalAddress(a), a);
  for (const a of ["8.8.8.8", "203.0.114.9", "2a00:1450::1"]) t.false(internalAddress(a), a);
  const uuid = "3f2c1a7e-4111-4111-9111-111111111111";
  t.true(insideHexId(`id ${uuid}`, 12, 36));
  t.false(insideHexId("card 4111111111111111", 5, 21));
  t.is(csvHeaderOf("name,ssn,dob\nAnna,536221234,1990", 18), "ssn");
  t.is(csvHeaderOf('{"notes":["name,ssn\\nAnna', 0), undefined);
  t.is(csvHeaderOf('{"x":1,"notes":["name,ssn,dob\nAnna,536221234,1990"]}', 36), "ssn");
});

test("secrets - placeholders are not secrets; vendor tokens and URL passwords are", (t) => {
  for (const v of ["${DB_PASSWORD}", "<redacted>", "********", "changeme", "YOUR_API_KEY", "{{token}}"])
    t.true(placeholderValue(v), v);
  t.false(placeholderValue("S3cr3t!pw"));
  const kinds = (s: string): string[] => detectPii(s).map((d) => `${d.kind}:${d.rule}`);
  t.deepEqual(kinds(`npm_${"a1B2c3D4e5".repeat(3)}abcdef`), ["api_secret:npm_token"]);
  t.deepEqual(kinds(`key sk_live_${"X".repeat(24)}`), []);
  t.deepEqual(kinds("postgres://app:S3cr3t!pw@db.internal:5432/x"), ["api_secret:url_credentials"]);
  t.deepEqual(kinds("-----BEGIN PGP PRIVATE KEY BLOCK-----"), ["api_secret:pgp_private_key"]);
  t.deepEqual(kinds("-----BEGIN PGP PUBLIC KEY BLOCK-----"), []);
});
