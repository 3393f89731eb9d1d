// A small Markdown renderer: fenced and inline code, headings, lists, quotes, emphasis,
// links. It escapes every character of the input first, so model output can never
// inject HTML; only the tags made here reach the page.
"use strict";
const Markdown = (() => {
  const escape = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function inline(text) {
    const codes = [];
    let s = escape(text).replace(/`([^`]+)`/g, (_, code) => { codes.push(code); return `\u0000${codes.length - 1}\u0000`; });
    s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
         .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
         .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>');
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
  }

  function render(source) {
    const out = [];
    const lines = source.replace(/\r\n/g, "\n").split("\n");
    let i = 0;
    let paragraph = [];
    const flush = () => { if (paragraph.length) { out.push(`<p>${inline(paragraph.join(" "))}</p>`); paragraph = []; } };
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
      if (fence) {
        flush();
        const body = [];
        i += 1;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) { body.push(lines[i]); i += 1; }
        i += 1;  // the closing fence (or the end of a reply still streaming)
        const lang = fence[1] ? ` class="language-${escape(fence[1])}"` : "";
        out.push(`<pre><code${lang}>${escape(body.join("\n"))}</code></pre>`);
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
      if (heading) {
        flush();
        out.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`);
      } else if (item) {
        flush();
        const ordered = /\d/.test(item[1]);
        const items = [];
        while (i < lines.length) {
          const m = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
          if (!m) break;
          items.push(`<li>${inline(m[2])}</li>`);
          i += 1;
        }
        out.push(ordered ? `<ol>${items.join("")}</ol>` : `<ul>${items.join("")}</ul>`);
        continue;
      } else if (/^>\s?/.test(line)) {
        flush();
        out.push(`<blockquote>${inline(line.replace(/^>\s?/, ""))}</blockquote>`);
      } else if (line.trim() === "") {
        flush();
      } else {
        paragraph.push(line);
      }
      i += 1;
    }
    flush();
    return out.join("\n");
  }
  return { render, escape };
})();
