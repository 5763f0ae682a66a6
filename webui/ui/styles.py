"""The styles row beside a tab's prompt: pick styles (applied when generating, A1111's way), write them
into the prompt, and save, edit or delete them (`styles.csv`; an admin's action when logins are on)."""
from __future__ import annotations

import gradio as gr

from webui.auth import Gate
from webui.features.styles import Style, StyleLibrary
from webui.generation.errors import FieldError

from .widgets import error_html, notice_html, ui_caller

ICON_APPLY = "Apply styles to prompt"


class StylesRow:
    def __init__(self, prefix: str, library: StyleLibrary, prompt: gr.Textbox, negative: gr.Textbox,
                 gate: Gate | None = None):
        self.prefix = prefix
        self.library = library
        self.prompt = prompt
        self.negative = negative
        self.gate = gate

    def names(self) -> list[str]:
        return [s.name for s in self.library.all()]

    def build(self) -> None:
        p = self.prefix
        with gr.Row(elem_id=f"{p}_styles_row"):
            self.picker = gr.Dropdown(self.names(), value=[], multiselect=True, label="Styles", scale=5,
                                      elem_id=f"{p}_styles")
            self.apply = gr.Button(ICON_APPLY, size="sm", scale=1, elem_id=f"{p}_styles_apply")
        with gr.Accordion("Edit styles", open=False, elem_id=f"{p}_styles_edit"):
            self.name = gr.Dropdown(self.names(), value=None, allow_custom_value=True, label="Style name",
                                    elem_id=f"{p}_style_name")
            self.style_prompt = gr.Textbox(label="Prompt ({prompt} = where the prompt goes)", lines=2,
                                           elem_id=f"{p}_style_prompt")
            self.style_negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{p}_style_negative")
            with gr.Row():
                self.copy = gr.Button("Copy the current prompt", size="sm", elem_id=f"{p}_style_copy")
                self.save = gr.Button("Save", size="sm", variant="primary", elem_id=f"{p}_style_save")
                self.delete = gr.Button("Delete", size="sm", elem_id=f"{p}_style_delete")
            self.status = gr.HTML(elem_id=f"{p}_style_status")
        self.wire()

    def wire(self) -> None:
        self.apply.click(self.apply_to_prompt, inputs=[self.picker, self.prompt, self.negative],
                         outputs=[self.picker, self.prompt, self.negative], api_name=False)
        self.name.input(self.load, inputs=self.name, outputs=[self.style_prompt, self.style_negative], api_name=False)
        self.copy.click(lambda p, n: (p, n), inputs=[self.prompt, self.negative],
                        outputs=[self.style_prompt, self.style_negative], api_name=False)
        edited = [self.status, self.picker, self.name]
        self.save.click(self.store, inputs=[self.name, self.style_prompt, self.style_negative], outputs=edited,
                        api_name=False)
        self.delete.click(self.remove, inputs=self.name, outputs=edited, api_name=False)

    def apply_to_prompt(self, chosen: list[str], prompt: str, negative: str):
        """The styles written into the prompt boxes (and unpicked, so they do not apply twice)."""
        try:
            prompt, negative = self.library.apply(chosen or [], prompt or "", negative or "")
        except FieldError:
            return gr.skip(), gr.skip(), gr.skip()
        return [], prompt, negative

    def load(self, name: str | None):
        style = self.library.get(name or "")
        return (style.prompt, style.negative_prompt) if style else (gr.skip(), gr.skip())

    def _refreshed(self, message: str, name: str | None):
        names = self.names()
        return notice_html(message), gr.Dropdown(choices=names), gr.Dropdown(choices=names, value=name)

    def store(self, name: str | None, prompt: str, negative: str, request: gr.Request):
        if not self.may_edit(request):
            return error_html("Only an admin can change the styles on this server."), gr.skip(), gr.skip()
        try:
            style = self.library.save(Style(name or "", prompt or "", negative or ""))
        except (FieldError, OSError) as e:
            return error_html(str(e)), gr.skip(), gr.skip()
        return self._refreshed(f"Saved {style.name!r} to {style.path.name}", style.name)

    def remove(self, name: str | None, request: gr.Request):
        if not self.may_edit(request):
            return error_html("Only an admin can change the styles on this server."), gr.skip(), gr.skip()
        try:
            self.library.delete(name or "")
        except (FieldError, OSError) as e:
            return error_html(str(e)), gr.skip(), gr.skip()
        return self._refreshed(f"Deleted {name!r}", None)

    def may_edit(self, request: gr.Request) -> bool:
        """Styles are the server's, shared by everyone: with logins, only admins change them."""
        return ui_caller(request, self.gate).manager
