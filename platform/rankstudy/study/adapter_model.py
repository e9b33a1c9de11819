"""The MLflow model an adapter registered by rankstudy loads as (MLflow's "models from code":
this file is logged with the model and run when it loads, so nothing is unpickled).

The base model is built the way the study built it (rankstudy.model.build.load_model, from the
study's model spec: a hub id, local folder, GGUF file or tiny config), then the exported PEFT
adapter is put on it. predict takes prompts as token ids of the base model's tokenizer and
returns each prompt's greedy continuation: the tokens `PeftModel.from_pretrained` on the
exported folder generates.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel

        from rankstudy.core.spec import ModelSpec
        from rankstudy.model.build import load_model

        spec = ModelSpec.model_validate(context.model_config["base_model"])
        base = load_model(spec, torch.float32).model
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.max_new_tokens = int(context.model_config["max_new_tokens"])

    def predict(self, model_input: list[list[int]], params=None) -> list[list[int]]:
        """Each prompt's max_new_tokens greedy tokens (load_model's model_config sets it)."""
        import torch

        out = []
        with torch.no_grad():
            for prompt in model_input:  # one at a time: prompts of any length, no padding
                ids = torch.tensor([prompt])
                done = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                )
                out.append(done[0, ids.shape[1] :].tolist())
        return out


mlflow.models.set_model(AdapterModel())
