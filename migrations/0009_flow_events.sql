-- Flows (DESIGN.md §10): what the nodes' datapaths saw, joined by the controller that heard
-- them, one row a record, kept for a short while (the controller deletes what is older than
-- its --flow-event-retention). Every process answers GET /v1/flows from here, whichever
-- controller wrote it. `projects` holds the projects of the flow's ends that are ports: a
-- project reader sees the rows naming its project.
CREATE TABLE flow_events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    projects text[] NOT NULL,
    flow jsonb NOT NULL
);
CREATE INDEX flow_events_at ON flow_events (at);
CREATE INDEX flow_events_projects ON flow_events USING gin (projects);
