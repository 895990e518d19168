// Which dropped file is the mask of which image: the rule of fewseg.data.pairing.pair_images (the CLI's
// support folders) applied to the names of files dropped together. Same names, same pairs: tests run both.
//   - images: names with an image extension (any case), hidden names (".x") left out;
//   - a name whose stem ends in "_mask" is a mask, never an image;
//   - names sharing a stem are one image: the first non-PNG in sorted order, else the PNG;
//   - the mask of image <stem> is <stem>_mask.png, else <stem>.png when the image itself is not a PNG.
// Works in the page (window.fewsegPairing) and in node (module.exports).
(function (root) {
  "use strict";
  const DEFAULTS = { imageExtensions: [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"], maskSuffix: "_mask" };

  // Python's pathlib suffix/stem of a base name: the last ".x", unless the dot starts or ends the name
  function split(name) {
    const i = name.lastIndexOf(".");
    return i > 0 && i < name.length - 1 ? [name.slice(0, i), name.slice(i)] : [name, ""];
  }

  // Python's str ordering: by code point (JS's default sort compares UTF-16 units)
  function compare(a, b) {
    const x = Array.from(a), y = Array.from(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const d = x[i].codePointAt(0) - y[i].codePointAt(0);
      if (d) return d;
    }
    return x.length - y.length;
  }

  function isPng(name) { return split(name)[1].toLowerCase() === ".png"; }
  function firstPng(names) { return names.slice().sort(compare).find(isPng) || null; }

  // names: file names (no folders). Returns {pairs: [[image, mask or null]] sorted by stem,
  // unused: [{name, why}]}. options: {imageExtensions, maskSuffix} (the server's, from /api/info).
  function pairNames(names, options) {
    const exts = ((options && options.imageExtensions) || DEFAULTS.imageExtensions).map(e => e.toLowerCase());
    const suffix = (options && options.maskSuffix) || DEFAULTS.maskSuffix;
    const byStem = new Map(), unused = [];
    for (const name of names) {
      const [stem, ext] = split(name);
      if (name.startsWith(".")) unused.push({ name, why: "a hidden file" });
      else if (!exts.includes(ext.toLowerCase())) unused.push({ name, why: "not an image file (" + exts.join(", ") + ")" });
      else { if (!byStem.has(stem)) byStem.set(stem, []); byStem.get(stem).push(name); }
    }
    const used = new Set(), pairs = [];
    for (const stem of Array.from(byStem.keys()).sort(compare)) {
      if (stem.endsWith(suffix)) continue;  // a mask, not an image
      const paths = byStem.get(stem).slice().sort(compare);
      const photos = paths.filter(p => !isPng(p));
      const image = photos.length ? photos[0] : paths[0];
      const mask = firstPng(byStem.get(stem + suffix) || []) || (photos.length ? firstPng(paths) : null);
      pairs.push([image, mask]);
      used.add(image); if (mask) used.add(mask);
    }
    for (const [stem, list] of byStem) {
      for (const name of list) {
        if (used.has(name)) continue;
        if (stem.endsWith(suffix)) {
          const base = stem.slice(0, stem.length - suffix.length);
          unused.push({ name, why: `a mask with no image ${base}.* among the files` });
        } else unused.push({ name, why: `another file is the image of ${stem}` });
      }
    }
    return { pairs, unused };
  }

  // The same for File objects (or anything with .name): {pairs: [[file, maskFile or null]], unused}
  function pairFiles(files, options) {
    const byName = new Map();
    for (const f of files) byName.set(f.name, f);
    const { pairs, unused } = pairNames(Array.from(byName.keys()), options);
    return { pairs: pairs.map(([i, m]) => [byName.get(i), m ? byName.get(m) : null]), unused };
  }

  const api = { pairNames, pairFiles, split, compare, DEFAULTS };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.fewsegPairing = api;
})(typeof window !== "undefined" ? window : this);
