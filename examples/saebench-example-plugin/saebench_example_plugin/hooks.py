"""The plugin's hooks: light, so listing plugins and validating suites import no torch."""

from saebench_vision import hookimpl


@hookimpl
def register_saes():
    return {"tied-relu": "saebench_example_plugin.sae:TiedReLUSAE"}
