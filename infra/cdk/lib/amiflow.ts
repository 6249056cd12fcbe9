// amiflow for CDK users: the same resources as infra/template.json (the SAM template).
//
// Roles come from infra/steps.json, which the Rust side generates from the step registry
// and a test keeps in sync: each step's function gets a role granting exactly the IAM
// actions that step declares, each as far as infra.rs scopes it (the manifest's
// `statements`), iam:PassRole only on the named instance profile roles.

import * as fs from 'fs';
import * as path from 'path';
import { Duration, RemovalPolicy, Stack, StackProps, CfnOutput } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { Construct } from 'constructs';

/** One entry of infra/steps.json. */
export interface StepManifestEntry {
  readonly name: string;
  readonly logical_id: string;
  readonly iam_actions: string[];
  /**
   * The step's policy statements (iam:PassRole apart) as infra.rs renders them, their
   * resources and condition values `${...}` patterns that {@link stepPolicy} fills in.
   */
  readonly statements: Record<string, unknown>[];
  readonly timeout_seconds: number;
  readonly memory_mb: number;
  /** False for the janitor and DeliverEvent, which EventBridge invokes rather than the state machine. */
  readonly state_machine_task: boolean;
  /** EventBridge rules on AWS's own events that invoke this step (DeliverEvent: EC2's state changes). */
  readonly event_rules?: { id: string; description: string; pattern: Record<string, unknown> }[];
  /** The `${...}` placeholder the ASL uses for this step's function ARN. */
  readonly substitution: string;
}

/** infra/steps.json as a whole. */
export interface StepsManifest {
  readonly steps: StepManifestEntry[];
  readonly chroot_host_document: Record<string, unknown>;
  /** IAM path of the temporary instance profile roles (`/amiflow/`): passed to EC2 too. */
  readonly temporary_role_path?: string;
  /** The permissions boundary policy of the temporary instance profile roles. */
  readonly temporary_role_boundary?: Record<string, unknown>;
  /** The alias each function publishes and the state machine invokes. */
  readonly function_alias?: string;
  /**
   * The role UploadBundle assumes (scoped down to one bundle per session) for the credentials
   * `bundle_upload_command` is handed: its IAM path and statements, as patterns.
   */
  readonly bundle_upload_role?: { readonly path: string; readonly statements: Record<string, unknown>[] };
}

/** The step whose role alone may assume the bundle upload role. */
const BUNDLE_UPLOAD_STEP = 'UploadBundle';

export interface AmiflowSchedule {
  /** `cron(...)`, `rate(...)` or `at(...)`, as EventBridge Scheduler reads it. */
  readonly expression: string;
  /** IANA time zone of the expression; UTC by default. */
  readonly timezone?: string;
  /** s3://bucket/key of the Packer template to build. */
  readonly templateS3: string;
  readonly vars?: Record<string, string>;
  /**
   * Sensitive variables: name -> SecureString parameter under `/amiflow-schedule/`, copied
   * into each run's own path by the ScheduledStart function (never into its input).
   */
  readonly secretVars?: Record<string, string>;
}

export interface AmiflowProps {
  /** Directory holding the `bootstrap` binary built for Lambda. */
  readonly bootstrapDir: string;
  /** Defaults to X86_64; must match the binary (infra/lambda/build-bootstrap.sh checks). */
  readonly architecture?: lambda.Architecture;
  /** Defaults to statemachine/amiflow.asl.json of this repository. */
  readonly definitionFile?: string;
  /** An execution still running after this ends TIMED_OUT; 6 hours by default. */
  readonly executionTimeout?: Duration;
  /** Builds of one execution run at most this many at a time (the Map's MaxConcurrency); 10 by default, 0 = all at once. */
  readonly maxConcurrentBuilds?: number;
  /** Subscribed to the alarm topic when given. */
  readonly alarmEmail?: string;
  /** Defaults to infra/steps.json of this repository (read at synth time). */
  readonly steps?: StepsManifest;
  /** Roles of the instance profiles templates may attach: the only roles passed to EC2. */
  readonly instanceProfileRoleNames?: string[];
  /** Its instance must carry the tag `amiflow:build-host` = the stack's name. */
  readonly buildHostInstanceId?: string;
  /** Make the amazon-chroot build host (an SSM-managed Amazon Linux 2023 instance); it replaces buildHostInstanceId. */
  readonly createBuildHost?: boolean;
  /** Instance type of the host createBuildHost makes; t3.small by default. */
  readonly buildHostInstanceType?: string;
  /**
   * amazon-instance: the bucket (or name pattern, e.g. `amiflow-bundles-*`) bundles may go
   * to; with the artifacts bucket the only buckets the steps may use. None by default.
   */
  readonly bundleBuckets?: string;
  /** Pipelines publish image ids only to SSM parameters under this path; `/images/` by default. */
  readonly publishParameterPrefix?: string;
  readonly defaultVpcId?: string;
  readonly defaultSubnetId?: string;
  /** X-Ray for the state machine and the functions. */
  readonly tracing?: boolean;
  /** Of the state machine's and every function's log group; one month by default. */
  readonly logRetention?: logs.RetentionDays;
  readonly stagedFilesExpiration?: Duration;
  /** Start builds on a schedule; none when absent. */
  readonly schedule?: AmiflowSchedule;
  /** Regions the janitor sweeps when an execution's input names none. */
  readonly janitorRegions?: string[];
}

const JANITOR = 'Janitor';
/** The schedule's target (functions/amiflow/src/steps/scheduled_start.rs). */
const SCHEDULED_START = 'ScheduledStart';

/** What Lambda logs when an invocation fails outside the handler (as infra.rs's metric filter). */
export const LAMBDA_FAILURE_PATTERN = '?"Task timed out" ?"Runtime.ExitError" ?"Runtime.OutOfMemory" ?"Runtime.Unknown"';

/**
 * A file of this repository, found from the compiled construct (dist/lib/ or dist/bin/,
 * four levels below the root) or from its source (lib/ or bin/, three levels).
 */
export function repositoryFile(...relative: string[]): string {
  const candidates = [
    path.join(__dirname, '..', '..', '..', '..', ...relative),
    path.join(__dirname, '..', '..', '..', ...relative),
  ];
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) {
    throw new Error(`${relative.join('/')} not found (looked at ${candidates.join(', ')}): build from the repository, or pass it`);
  }
  return found;
}

export function loadStepsManifest(file?: string): StepsManifest {
  const found = file ?? repositoryFile('infra', 'steps.json');
  return JSON.parse(fs.readFileSync(found, 'utf8')) as StepsManifest;
}

/**
 * The definition as deployed: its top-level TimeoutSeconds (the execution timeout) set, and
 * the builds Map's MaxConcurrency (rendered 0 by flows.rs) set to `maxConcurrentBuilds`.
 */
export function deployedDefinition(text: string, timeout: Duration, maxConcurrentBuilds = 10): string {
  const definition = JSON.parse(text);
  if (definition.TimeoutSeconds !== undefined) {
    throw new Error('the definition has its own TimeoutSeconds: the executionTimeout setting sets it');
  }
  const maps = Object.values(definition.States ?? {}).filter((s: any) => s.Type === 'Map' && s.MaxConcurrency === 0) as any[];
  if (maps.length !== 1) {
    throw new Error(`the definition must have exactly one Map with MaxConcurrency 0 (the builds), found ${maps.length}: regenerate it from flows.rs`);
  }
  maps[0].MaxConcurrency = maxConcurrentBuilds;
  return JSON.stringify({ TimeoutSeconds: timeout.toSeconds(), ...definition });
}

/** What the `${...}` patterns of the manifest's statements stand for in a stack. */
export type PolicyPatterns = Record<string, string>;

/** `value` with every `${NAME}` pattern replaced by `patterns[NAME]`; an unknown one throws. */
export function fillPatterns(value: unknown, patterns: PolicyPatterns): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z:]+)\}/g, (whole, name: string) => {
      if (!(name in patterns)) {
        throw new Error(`steps.json: the pattern ${whole} is not known to the construct: regenerate infra/ and update stepPolicy`);
      }
      return patterns[name];
    });
  }
  if (Array.isArray(value)) return value.map((v) => fillPatterns(v, patterns));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillPatterns(v, patterns)]));
  }
  return value;
}

/** `statements` with their patterns filled in; resources of a pattern the stack leaves empty (no bundle bucket named) are left out. */
export function filledStatements(statements: Record<string, unknown>[], patterns: PolicyPatterns): iam.PolicyStatement[] {
  const unset = Object.keys(patterns).filter((name) => patterns[name] === '').map((name) => `\${${name}}`);
  return statements.map((st) => {
    const resources = [st.Resource].flat().filter((r) => typeof r !== 'string' || !unset.some((u) => r.includes(u)));
    return iam.PolicyStatement.fromJson(fillPatterns({ ...st, Resource: resources }, patterns));
  });
}

/**
 * The step's inline policy: its statements as infra.rs scopes them (patterns filled in),
 * iam:PassRole towards EC2 only, on the temporary instance profile roles and the named roles.
 */
export function stepPolicy(step: StepManifestEntry, scope: Construct, roleNames: string[], patterns: PolicyPatterns, temporaryRolePath = '/amiflow/'): iam.PolicyDocument | undefined {
  const stack = Stack.of(scope);
  const passRole = step.iam_actions.some((a) => a.toLowerCase() === 'iam:passrole');
  const statements = filledStatements(step.statements, patterns);
  if (passRole) {
    // The temporary instance profile roles IamInstanceProfile creates under this path.
    statements.push(new iam.PolicyStatement({
      sid: 'PassTemporaryInstanceProfileRoles',
      actions: ['iam:PassRole'],
      resources: [stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: `${temporaryRolePath.replace(/^\/+/, '')}*` })],
      conditions: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
    }));
  }
  if (passRole && roleNames.length > 0) {
    statements.push(new iam.PolicyStatement({
      sid: 'PassInstanceProfileRoles',
      actions: ['iam:PassRole'],
      resources: roleNames.map((name) => stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: name })),
      conditions: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
    }));
  }
  return statements.length > 0 ? new iam.PolicyDocument({ statements }) : undefined;
}

export class Amiflow extends Construct {
  readonly stateMachine: sfn.StateMachine;
  readonly artifactsBucket: s3.Bucket;
  readonly functions: Record<string, lambda.Function> = {};
  /** The published alias of each function: what the state machine and the janitor rule invoke. */
  readonly aliases: Record<string, lambda.Alias> = {};
  readonly chrootHostDocument: ssm.CfnDocument;
  readonly alarmTopic: sns.Topic;

  constructor(scope: Construct, id: string, props: AmiflowProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const manifest = props.steps ?? loadStepsManifest();
    const tracing = props.tracing ?? false;
    const roleNames = props.instanceProfileRoleNames ?? [];
    const retention = props.logRetention ?? logs.RetentionDays.ONE_MONTH;
    const aliasName = manifest.function_alias ?? 'live';

    this.artifactsBucket = new s3.Bucket(this, 'ArtifactsBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [
        { id: 'ExpireStagedFiles', prefix: 'staged/', expiration: props.stagedFilesExpiration ?? Duration.days(7) },
        { id: 'ExpireSsmOutput', prefix: 'ssm-output/', expiration: props.stagedFilesExpiration ?? Duration.days(7) },
        { id: 'AbortIncompleteUploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
    });

    this.chrootHostDocument = new ssm.CfnDocument(this, 'ChrootHostDocument', {
      documentType: 'Command',
      documentFormat: 'JSON',
      content: manifest.chroot_host_document,
    });

    this.alarmTopic = new sns.Topic(this, 'AlarmTopic');
    if (props.alarmEmail) {
      this.alarmTopic.addSubscription(new subscriptions.EmailSubscription(props.alarmEmail));
    }
    const notify = new cwActions.SnsAction(this.alarmTopic);
    const alarmOn = (alarmId: string, description: string, metric: cloudwatch.IMetric) => {
      const alarm = new cloudwatch.Alarm(this, alarmId, {
        alarmDescription: description,
        metric,
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      alarm.addAlarmAction(notify);
      return alarm;
    };
    const failuresNamespace = `amiflow/${stack.stackName}`;

    const janitorDeadLetters = new sqs.Queue(this, 'JanitorDeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      retentionPeriod: Duration.days(14),
      enforceSSL: true,
    });

    const buildHostId = props.createBuildHost ? makeBuildHost(this, props).ref : (props.buildHostInstanceId ?? '');

    // What a temporary instance profile role can ever do: CreateRole is allowed only with it.
    const temporaryRoleBoundary = new iam.ManagedPolicy(this, 'TemporaryRoleBoundary', {
      description: 'amiflow: the most a temporary instance profile role (temporary_iam_instance_profile_policy_document) may do',
      path: manifest.temporary_role_path ?? '/amiflow/',
      document: iam.PolicyDocument.fromJson(manifest.temporary_role_boundary ?? (() => {
        throw new Error('the steps manifest has no temporary_role_boundary: regenerate infra/steps.json (AMIFLOW_UPDATE_INFRA=1)');
      })()),
    });
    const patterns: PolicyPatterns = {
      'AWS::Partition': stack.partition,
      'AWS::Region': stack.region,
      'AWS::AccountId': stack.account,
      'AWS::StackName': stack.stackName,
      ArtifactsBucket: this.artifactsBucket.bucketName,
      ChrootHostDocument: this.chrootHostDocument.ref,
      TemporaryRoleBoundary: temporaryRoleBoundary.managedPolicyArn,
      BundleBuckets: props.bundleBuckets ?? '',
      PublishParameterPrefix: props.publishParameterPrefix ?? '/images/',
      ScheduleTemplateObject: (props.schedule?.templateS3 ?? '').replace(/^s3:\/\//, ''),
    };
    const code = lambda.Code.fromAsset(props.bootstrapDir);
    for (const step of manifest.steps) {
      const policy = stepPolicy(step, this, roleNames, patterns, manifest.temporary_role_path);
      const role = new iam.Role(this, `${step.logical_id}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaBasicExecutionRole')],
        inlinePolicies: policy ? { [`amiflow-${step.name}`]: policy } : undefined,
      });
      const environment: Record<string, string> = {
        AMIFLOW_ARTIFACTS_BUCKET: this.artifactsBucket.bucketName,
        AMIFLOW_BUILD_HOST_INSTANCE_ID: buildHostId,
        AMIFLOW_DEFAULT_VPC_ID: props.defaultVpcId ?? '',
        AMIFLOW_DEFAULT_SUBNET_ID: props.defaultSubnetId ?? '',
        AMIFLOW_CHROOT_DOCUMENT: this.chrootHostDocument.ref,
        AMIFLOW_STACK_NAME: stack.stackName,
        AMIFLOW_TEMPORARY_ROLE_BOUNDARY: temporaryRoleBoundary.managedPolicyArn,
      };
      if (step.name === BUNDLE_UPLOAD_STEP && manifest.bundle_upload_role) {
        // Never the function's own keys on the instance: a role only this step's role may
        // assume, which UploadBundle narrows to the bundle's objects for each session.
        const bundleUploadRole = new iam.Role(this, 'BundleUploadRole', {
          assumedBy: new iam.ArnPrincipal(role.roleArn),
          path: manifest.bundle_upload_role.path,
          maxSessionDuration: Duration.hours(1),
          inlinePolicies: { 'amiflow-bundle-upload': new iam.PolicyDocument({ statements: filledStatements(manifest.bundle_upload_role.statements, patterns) }) },
        });
        environment.AMIFLOW_BUNDLE_UPLOAD_ROLE_ARN = bundleUploadRole.roleArn;
      }
      if (step.name === JANITOR) {
        environment.AMIFLOW_JANITOR_REGIONS = (props.janitorRegions ?? []).join(',');
      }
      const logGroup = new logs.LogGroup(this, `${step.logical_id}LogGroup`, {
        logGroupName: `/aws/lambda/${stack.stackName}/${step.name}`,
        retention,
      });
      // Lambda's own failures (timeouts, crashes): the handlers' errors include every
      // poll of a wait, so they are not counted.
      logGroup.addMetricFilter('Failures', {
        filterPattern: logs.FilterPattern.literal(LAMBDA_FAILURE_PATTERN),
        metricNamespace: failuresNamespace,
        metricName: 'LambdaFailures',
        metricValue: '1',
      });
      const fn = new lambda.Function(this, `${step.logical_id}Function`, {
        code,
        handler: step.name,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        architecture: props.architecture ?? lambda.Architecture.X86_64,
        timeout: Duration.seconds(step.timeout_seconds),
        memorySize: step.memory_mb,
        role,
        environment,
        logGroup,
        tracing: tracing ? lambda.Tracing.ACTIVE : lambda.Tracing.PASS_THROUGH,
        deadLetterQueue: step.name === JANITOR ? janitorDeadLetters : undefined,
      });
      this.functions[step.name] = fn;
      this.aliases[step.name] = new lambda.Alias(this, `${step.logical_id}Alias`, { aliasName, version: fn.currentVersion });
    }

    const tasks = manifest.steps.filter((s) => s.state_machine_task);
    const stateMachineRole = new iam.Role(this, 'StateMachineRole', {
      assumedBy: new iam.ServicePrincipal('states.amazonaws.com'),
      inlinePolicies: tasks.length > 0 ? {
        'amiflow-state-machine': new iam.PolicyDocument({
          statements: [new iam.PolicyStatement({
            sid: 'InvokeSteps',
            actions: ['lambda:InvokeFunction'],
            resources: tasks.map((s) => this.aliases[s.name].functionArn),
          })],
        }),
      } : undefined,
    });
    const logGroup = new logs.LogGroup(this, 'StateMachineLogGroup', {
      logGroupName: `/aws/vendedlogs/states/${stack.stackName}-amiflow`,
      retention,
    });
    const substitutions: Record<string, string> = {};
    for (const s of tasks) substitutions[s.substitution] = this.aliases[s.name].functionArn;
    const definitionFile = props.definitionFile ?? repositoryFile('statemachine', 'amiflow.asl.json');
    const definition = deployedDefinition(fs.readFileSync(definitionFile, 'utf8'), props.executionTimeout ?? Duration.hours(6), props.maxConcurrentBuilds ?? 10);
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      // Inline, as SAM's DefinitionUri ends up: no asset bucket needed for the definition.
      definitionBody: sfn.DefinitionBody.fromString(definition),
      definitionSubstitutions: substitutions,
      role: stateMachineRole,
      // Named after the stack: the roles answering its task tokens name it (infra.rs, Reach::StackStateMachine).
      stateMachineName: Stack.of(this).stackName,
      stateMachineType: sfn.StateMachineType.STANDARD,
      tracingEnabled: tracing,
      // Execution data stays out of the logs: the execution history already holds it.
      logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: false },
    });

    alarmOn('ExecutionsFailedAlarm', 'An amiflow build failed (its execution ended FAILED)', this.stateMachine.metricFailed({ period: Duration.minutes(5), statistic: 'Sum' }));
    alarmOn('ExecutionsTimedOutAlarm', 'An amiflow build ran longer than its execution timeout', this.stateMachine.metricTimedOut({ period: Duration.minutes(5), statistic: 'Sum' }));
    alarmOn('LambdaFailuresAlarm', 'An amiflow function timed out, crashed or ran out of memory (see the functions\' log groups)',
      new cloudwatch.Metric({ namespace: failuresNamespace, metricName: 'LambdaFailures', statistic: 'Sum', period: Duration.minutes(5) }));

    if (props.schedule) {
      const deadLetters = new sqs.Queue(this, 'ScheduleDeadLetterQueue', {
        encryption: sqs.QueueEncryption.SQS_MANAGED,
        retentionPeriod: Duration.days(14),
        enforceSSL: true,
      });
      const role = new iam.Role(this, 'ScheduleRole', {
        assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', { conditions: { StringEquals: { 'aws:SourceAccount': stack.account } } }),
      });
      const start = this.aliases[SCHEDULED_START];
      if (!start) throw new Error(`schedule: the steps manifest has no ${SCHEDULED_START} function, the schedule's target (regenerate infra/steps.json)`);
      this.functions[SCHEDULED_START].addEnvironment('AMIFLOW_STATE_MACHINE_ARN', this.stateMachine.stateMachineArn);
      this.functions[SCHEDULED_START].addEnvironment('AMIFLOW_SCHEDULE_SECRET_VARS', JSON.stringify(props.schedule.secretVars ?? {}));
      start.grantInvoke(role);
      deadLetters.grantSendMessages(role);
      new scheduler.CfnSchedule(this, 'Schedule', {
        description: 'Starts an amiflow build on a schedule',
        scheduleExpression: props.schedule.expression,
        scheduleExpressionTimezone: props.schedule.timezone ?? 'UTC',
        flexibleTimeWindow: { mode: 'OFF' },
        state: 'ENABLED',
        target: {
          arn: start.functionArn,
          roleArn: role.roleArn,
          input: JSON.stringify({ template_s3: props.schedule.templateS3, vars: props.schedule.vars ?? {} }),
          retryPolicy: { maximumRetryAttempts: 10, maximumEventAgeInSeconds: 3600 },
          deadLetterConfig: { arn: deadLetters.queueArn },
        },
      });
      alarmOn('ScheduleDeadLetterAlarm', 'A scheduled amiflow build could not be started: its event is in the schedule\'s dead-letter queue',
        deadLetters.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }));
    }

    // EC2's state-change events end the builds' waits early; best-effort (the waits poll after their timeout).
    for (const step of manifest.steps) {
      for (const rule of step.event_rules ?? []) {
        const pattern = rule.pattern as { source: string[]; 'detail-type': string[]; detail: Record<string, unknown> };
        new events.Rule(this, rule.id, {
          description: rule.description,
          eventPattern: { source: pattern.source, detailType: pattern['detail-type'], detail: pattern.detail },
          targets: [new targets.LambdaFunction(this.aliases[step.name], { retryAttempts: 3, maxEventAge: Duration.minutes(5) })],
        });
      }
    }

    const janitor = this.aliases[JANITOR];
    if (janitor) {
      new events.Rule(this, 'JanitorRule', {
        description: 'Sweeps the resources of amiflow builds that were aborted, timed out or failed',
        eventPattern: {
          source: ['aws.states'],
          detailType: ['Step Functions Execution Status Change'],
          detail: { status: ['ABORTED', 'TIMED_OUT', 'FAILED'], stateMachineArn: [this.stateMachine.stateMachineArn] },
        },
        targets: [new targets.LambdaFunction(janitor, { retryAttempts: 10, maxEventAge: Duration.hours(24), deadLetterQueue: janitorDeadLetters })],
      });
      // Builds kept for redrive are swept once their redrive window has closed (janitor.rs).
      new events.Rule(this, 'JanitorRedriveWindowRule', {
        description: 'Daily: sweeps amiflow builds kept for redrive whose redrive window has closed',
        schedule: events.Schedule.rate(Duration.days(1)),
        targets: [new targets.LambdaFunction(janitor, {
          event: events.RuleTargetInput.fromObject({ redrive_window: { state_machine_arn: this.stateMachine.stateMachineArn, days: 14 } }),
          retryAttempts: 10, maxEventAge: Duration.hours(24), deadLetterQueue: janitorDeadLetters,
        })],
      });
      alarmOn('JanitorErrorsAlarm', 'The janitor failed to sweep an ended build: its resources may be left',
        // The janitor's own count of failed sweeps (janitor.rs), not Lambda's Errors: a sweep
        // handed over to Lambda's retry fails the invocation, and is no failure.
        new cloudwatch.Metric({ namespace: failuresNamespace, metricName: 'JanitorFailures', statistic: 'Sum', period: Duration.minutes(5) }));
      alarmOn('JanitorDeadLetterAlarm', 'An ended build was not swept: its event is in the janitor\'s dead-letter queue',
        janitorDeadLetters.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }));
    }
  }
}

/** The same build host as the SAM template's CreateBuildHost (functions/amiflow/src/infra.rs). */
function makeBuildHost(scope: Amiflow, props: AmiflowProps): ec2.CfnInstance {
  const stack = Stack.of(scope);
  const role = new iam.Role(scope, 'BuildHostRole', {
    assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
    managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
  });
  role.addToPolicy(new iam.PolicyStatement({
    sid: 'StagedFilesAndCommandOutput',
    actions: ['s3:GetObject', 's3:PutObject'],
    resources: [scope.artifactsBucket.arnForObjects('staged/*'), scope.artifactsBucket.arnForObjects('ssm-output/*')],
  }));
  const profile = new iam.CfnInstanceProfile(scope, 'BuildHostInstanceProfile', { roles: [role.roleName] });
  const arch = props.architecture === lambda.Architecture.ARM_64 ? 'arm64' : 'x86_64';
  return new ec2.CfnInstance(scope, 'BuildHost', {
    imageId: ssm.StringParameter.valueForTypedStringParameterV2(scope, `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${arch}`, ssm.ParameterValueType.AWS_EC2_IMAGE_ID),
    instanceType: props.buildHostInstanceType ?? 't3.small',
    iamInstanceProfile: profile.ref,
    subnetId: props.defaultSubnetId || undefined,
    metadataOptions: { httpTokens: 'required', httpEndpoint: 'enabled' },
    blockDeviceMappings: [{ deviceName: '/dev/xvda', ebs: { volumeSize: 30, volumeType: 'gp3', encrypted: true } }],
    tags: [{ key: 'Name', value: `${stack.stackName}-build-host` }, { key: 'amiflow:build-host', value: stack.stackName }],
  });
}

/** A stack holding one {@link Amiflow}, with the outputs `amiflow start` needs. */
export class AmiflowStack extends Stack {
  readonly amiflow: Amiflow;

  constructor(scope: Construct, id: string, props: AmiflowProps & StackProps) {
    super(scope, id, props);
    this.amiflow = new Amiflow(this, 'Amiflow', props);
    new CfnOutput(this, 'StateMachineArn', { value: this.amiflow.stateMachine.stateMachineArn });
    new CfnOutput(this, 'ArtifactsBucketName', { value: this.amiflow.artifactsBucket.bucketName });
    new CfnOutput(this, 'ChrootHostDocumentName', { value: this.amiflow.chrootHostDocument.ref });
    new CfnOutput(this, 'AlarmTopicArn', { value: this.amiflow.alarmTopic.topicArn });
  }
}
