"""``confed-site agent``: the federated agent's command (polls the coordinator, answers tasks).

``confed-site agent --config agent.toml`` polls until stopped (``--once``: one poll);
``confed-site agent approve TASK_ID --config agent.toml`` releases a task that waits
for approval (policy ``approve = true``). Also runnable as
``python -m sites.federated.cli``.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Federated agent: answer the coordinator's tasks with aggregates only.",
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.callback()
def agent_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", help="the agent's TOML file"),
    once: bool = typer.Option(False, "--once", help="poll once and exit"),
) -> None:
    """Poll the coordinator for federated tasks and answer them (outbound only)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config
        return
    from sites.federated.node import Agent, AgentError, load_agent_config
    from sites.federated.policy import PolicyError
    from sites.keys import KeyFileError

    if config is None:
        _fail(ValueError("--config is required"))
    try:
        agent = Agent(load_agent_config(config))
    except (AgentError, PolicyError, KeyFileError) as exc:
        _fail(exc)
    typer.echo(f"agent of site {agent.config.site_id} polling {agent.config.url}")
    try:
        agent.run(once=once, on_error=lambda text: typer.echo(f"warning: {text}", err=True))
    except KeyboardInterrupt:
        typer.echo("stopped")


@app.command("approve")
def approve_command(
    ctx: typer.Context,
    task_id: str = typer.Argument(..., help="the queued task's id"),
    config: Path = typer.Option(None, "--config", help="the agent's TOML file"),
) -> None:
    """Approve a task waiting in the local queue; the next poll computes it."""
    from sites.federated.node import Agent, AgentError, load_agent_config
    from sites.keys import KeyFileError

    path = config or ctx.obj
    if path is None:
        _fail(ValueError("--config is required"))
    try:
        Agent(load_agent_config(path)).approve(task_id)
    except (AgentError, KeyFileError) as exc:
        _fail(exc)
    typer.echo(f"task {task_id} approved")


if __name__ == "__main__":
    app()
