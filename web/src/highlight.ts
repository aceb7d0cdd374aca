// Marks the words of a passage that match the query's words, as the keyword index would:
// case-insensitive, whole words, with common English endings ignored ("senators" finds
// "Senator"). Returns text nodes and <mark> elements, never markup built from strings.

import { h } from "./dom.js";

const STOP_WORDS = new Set(
  (
    "a all an and any are as at be by can did do does each for from has have how i in is it " +
    "its many may much must of on or shall should some that the their them they this to was " +
    "were what when where which who whom why will with would"
  ).split(" "),
);

const WORD = /[\p{L}\p{N}]+/gu;

function stem(word: string): string {
  const stemmed = word.replace(/(?:ies|es|s|ed|ing|ly)$/u, "");
  return stemmed.length >= 3 ? stemmed : word;
}

/** The query's stems worth highlighting, longest first. */
export function queryStems(query: string): string[] {
  const words = query.toLowerCase().match(WORD) ?? [];
  const stems = new Set(words.filter((w) => w.length > 1 && !STOP_WORDS.has(w)).map(stem));
  return [...stems].sort((a, b) => b.length - a.length);
}

export function highlight(text: string, query: string): Node[] {
  const stems = queryStems(query);
  if (stems.length === 0) return [document.createTextNode(text)];
  const nodes: Node[] = [];
  let last = 0;
  for (const match of text.matchAll(WORD)) {
    const word = match[0];
    if (!stems.includes(stem(word.toLowerCase()))) continue;
    const start = match.index ?? 0;
    if (start > last) nodes.push(document.createTextNode(text.slice(last, start)));
    nodes.push(h("mark", {}, word));
    last = start + word.length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}
