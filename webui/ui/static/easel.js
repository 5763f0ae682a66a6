() => {
  // Ctrl+Enter (Cmd+Enter on macOS) in a prompt box presses that tab's Generate button, as in A1111.
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    const box = e.target.closest && e.target.closest("[id$='_prompt'], [id$='_neg_prompt']");
    if (!box) return;
    const tab = box.id.replace(/_(neg_)?prompt$/, "");
    const button = document.getElementById(tab + "_generate");
    if (button) { e.preventDefault(); button.click(); }
  });
}
