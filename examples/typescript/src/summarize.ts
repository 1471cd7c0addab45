/** Extractive summary: the `max` sentences with the most frequent content words, in their original order. */
export function summarize(text: string, max = 2): string[] {
  const sentences = text
    .split(/(?<=[.!?])\s+/)
    .map((s) => s.trim())
    .filter(Boolean);
  if (sentences.length <= max) return sentences;
  const words = (s: string) => s.toLowerCase().match(/[a-z\u00c0-\u024f]{4,}/g) ?? [];
  const freq = new Map<string, number>();
  for (const w of words(text)) freq.set(w, (freq.get(w) ?? 0) + 1);
  const score = (s: string) => {
    const ws = words(s);
    return ws.reduce((n, w) => n + (freq.get(w) ?? 0), 0) / Math.max(1, ws.length);
  };
  return sentences
    .map((s, i) => ({ s, i, score: score(s) }))
    .sort((a, b) => b.score - a.score || a.i - b.i)
    .slice(0, max)
    .sort((a, b) => a.i - b.i)
    .map((x) => x.s);
}
