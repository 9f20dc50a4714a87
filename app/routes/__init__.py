"""One blueprint per resource; register_blueprints wires them all."""

from app.routes import chat, completions, health, metrics, models


def register_blueprints(app) -> None:
    metrics.init_app(app)
    for module in (health, models, metrics, chat, completions):
        app.register_blueprint(module.bp)
