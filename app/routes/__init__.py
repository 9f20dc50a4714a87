"""One blueprint per resource; register_blueprints wires them all."""

from app.routes import chat, completions, docs, health, metrics, models, playground, responses, tokenize


def register_blueprints(app) -> None:
    metrics.init_app(app)
    for module in (health, models, metrics, docs, chat, completions, responses, tokenize):
        app.register_blueprint(module.bp)
    if app.config["PLAYGROUND"]:
        app.register_blueprint(playground.bp)
