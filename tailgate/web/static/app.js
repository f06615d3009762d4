// tailgate dashboard: small progressive enhancements. Every page works without this file.
"use strict";

document.addEventListener("click", (event) => {
  const copy = event.target.closest("button.copy");
  if (copy) {
    const source = document.getElementById(copy.dataset.copyTarget);
    if (source && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent).then(() => {
        const label = copy.textContent;
        copy.textContent = "Copied";
        setTimeout(() => { copy.textContent = label; }, 1200);
      });
    }
  }
  const confirming = event.target.closest("[data-confirm]");
  if (confirming && !window.confirm(confirming.dataset.confirm)) {
    event.preventDefault();
  }
});

// The config editor: line numbers, Tab indents (Shift+Tab outdents), Ctrl/Cmd+S saves.
function setUpEditor(textarea) {
  const gutter = document.createElement("pre");
  gutter.className = "gutter";
  gutter.setAttribute("aria-hidden", "true");
  textarea.before(gutter);
  let shown = 0;
  const number = () => {
    const lines = textarea.value.split("\n").length;
    if (lines !== shown) {
      shown = lines;
      gutter.textContent = Array.from({ length: lines }, (_, i) => i + 1).join("\n");
    }
    gutter.scrollTop = textarea.scrollTop;
  };
  textarea.addEventListener("input", number);
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  number();

  textarea.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      const form = textarea.form;
      form.requestSubmit(form.querySelector('button[value="save"]'));
      return;
    }
    if (event.key !== "Tab" || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    const { selectionStart: start, selectionEnd: end, value } = textarea;
    const lineStart = value.lastIndexOf("\n", start - 1) + 1;
    if (event.shiftKey) {
      const indent = value.slice(lineStart, lineStart + 2).match(/^ {1,2}/);
      if (indent) {
        textarea.setRangeText("", lineStart, lineStart + indent[0].length, "preserve");
        textarea.setSelectionRange(Math.max(lineStart, start - indent[0].length), Math.max(lineStart, end - indent[0].length));
      }
    } else if (start === end) {
      textarea.setRangeText("  ", start, end, "end");
    } else {
      // Indent every selected line.
      const block = value.slice(lineStart, end).replace(/^/gm, "  ");
      textarea.setRangeText(block, lineStart, end, "select");
    }
    number();
  });
}

document.querySelectorAll("#config-text").forEach(setUpEditor);

// On a narrow screen a chart scrolls sideways: start at its right end, where today is.
document.querySelectorAll(".chart-wrap").forEach((wrap) => { wrap.scrollLeft = wrap.scrollWidth; });
