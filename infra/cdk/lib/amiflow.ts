// amiflow for CDK users: the same resources as infra/template.json (the SAM template).
//
// Roles come from infra/steps.json, which the Rust side generates from the step registry
// and a test keeps in sync: each step's function gets a role granting exactly the IAM
// actions that step declares, iam:PassRole only on the named instance profile roles.

import * as fs from 'fs';
import * as path from 'path';
import { Duration, RemovalPolicy, Stack, StackProps, CfnOutput } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { Construct } from 'constructs';

/** One entry of infra/steps.json. */
export interface StepManifestEntry {
  readonly name: string;
  readonly logical_id: string;
  readonly iam_actions: string[];
  readonly timeout_seconds: number;
  readonly memory_mb: number;
  /** False for the janitor, which EventBridge invokes rather than the state machine. */
  readonly state_machine_task: boolean;
  /** The `${...}` placeholder the ASL uses for this step's function ARN. */
  readonly substitution: string;
}

/** infra/steps.json as a whole. */
export interface StepsManifest {
  readonly steps: StepManifestEntry[];
  readonly chroot_host_document: Record<string, unknown>;
  /** IAM path of the temporary roles amiflow creates for instance profiles (`/amiflow/`). */
  readonly temporary_role_path: string;
}

export interface AmiflowSchedule {
  readonly schedule: events.Schedule;
  /** s3://bucket/key of the Packer template to build. */
  readonly templateS3: string;
  readonly vars?: Record<string, string>;
}

export interface AmiflowProps {
  /** Directory holding the `bootstrap` binary built for Lambda. */
  readonly bootstrapDir: string;
  /** Defaults to ARM_64; must match the binary. */
  readonly architecture?: lambda.Architecture;
  /** Defaults to statemachine/amiflow.asl.json of this repository. */
  readonly definitionFile?: string;
  /** Defaults to infra/steps.json of this repository (read at synth time). */
  readonly steps?: StepsManifest;
  /** Roles of the instance profiles templates may attach: the only roles passed to EC2. */
  readonly instanceProfileRoleNames?: string[];
  readonly buildHostInstanceId?: string;
  readonly defaultVpcId?: string;
  readonly defaultSubnetId?: string;
  /** X-Ray for the state machine and the functions. */
  readonly tracing?: boolean;
  readonly logRetention?: logs.RetentionDays;
  readonly stagedFilesExpiration?: Duration;
  /** Start builds on a schedule; none when absent. */
  readonly schedule?: AmiflowSchedule;
  /** Regions the janitor sweeps when an execution's input names none. */
  readonly janitorRegions?: string[];
}

const JANITOR = 'Janitor';

export function loadStepsManifest(file = path.join(__dirname, '..', '..', '..', 'steps.json')): StepsManifest {
  // Compiled to dist/lib/, the manifest is three levels up; from lib/ (ts-node) two.
  const candidates = [file, path.join(__dirname, '..', '..', 'steps.json')];
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) {
    throw new Error(`infra/steps.json not found (looked at ${candidates.join(', ')}): pass \`steps\` or build from the repository`);
  }
  return JSON.parse(fs.readFileSync(found, 'utf8')) as StepsManifest;
}

/** The step's inline policy: its actions on `*`, iam:PassRole towards EC2 only, on the named roles and amiflow's own temporary ones. */
export function stepPolicy(step: StepManifestEntry, scope: Construct, roleNames: string[], temporaryRolePath: string): iam.PolicyDocument | undefined {
  const stack = Stack.of(scope);
  const actions = step.iam_actions.filter((a) => a.toLowerCase() !== 'iam:passrole');
  const passRole = actions.length !== step.iam_actions.length;
  const statements: iam.PolicyStatement[] = [];
  if (actions.length > 0) {
    statements.push(new iam.PolicyStatement({ sid: 'StepActions', actions, resources: ['*'] }));
  }
  if (passRole && roleNames.length > 0) {
    statements.push(new iam.PolicyStatement({
      sid: 'PassInstanceProfileRoles',
      actions: ['iam:PassRole'],
      resources: roleNames.map((name) => stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: name })),
      conditions: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
    }));
  }
  if (passRole) {
    statements.push(new iam.PolicyStatement({
      sid: 'PassTemporaryProfileRoles',
      actions: ['iam:PassRole'],
      resources: [stack.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: `${temporaryRolePath.replace(/^\//, '')}*` })],
      conditions: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
    }));
  }
  return statements.length > 0 ? new iam.PolicyDocument({ statements }) : undefined;
}

export class Amiflow extends Construct {
  readonly stateMachine: sfn.StateMachine;
  readonly artifactsBucket: s3.Bucket;
  readonly functions: Record<string, lambda.Function> = {};
  readonly chrootHostDocument: ssm.CfnDocument;

  constructor(scope: Construct, id: string, props: AmiflowProps) {
    super(scope, id);
    const manifest = props.steps ?? loadStepsManifest();
    const tracing = props.tracing ?? false;
    const roleNames = props.instanceProfileRoleNames ?? [];

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

    const code = lambda.Code.fromAsset(props.bootstrapDir);
    for (const step of manifest.steps) {
      const policy = stepPolicy(step, this, roleNames, manifest.temporary_role_path);
      const role = new iam.Role(this, `${step.logical_id}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaBasicExecutionRole')],
        inlinePolicies: policy ? { [`amiflow-${step.name}`]: policy } : undefined,
      });
      const environment: Record<string, string> = {
        AMIFLOW_ARTIFACTS_BUCKET: this.artifactsBucket.bucketName,
        AMIFLOW_BUILD_HOST_INSTANCE_ID: props.buildHostInstanceId ?? '',
        AMIFLOW_DEFAULT_VPC_ID: props.defaultVpcId ?? '',
        AMIFLOW_DEFAULT_SUBNET_ID: props.defaultSubnetId ?? '',
        AMIFLOW_CHROOT_DOCUMENT: this.chrootHostDocument.ref,
      };
      if (step.name === JANITOR) {
        environment.AMIFLOW_JANITOR_REGIONS = (props.janitorRegions ?? []).join(',');
      }
      this.functions[step.name] = new lambda.Function(this, `${step.logical_id}Function`, {
        code,
        handler: step.name,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        architecture: props.architecture ?? lambda.Architecture.ARM_64,
        timeout: Duration.seconds(step.timeout_seconds),
        memorySize: step.memory_mb,
        role,
        environment,
        tracing: tracing ? lambda.Tracing.ACTIVE : lambda.Tracing.PASS_THROUGH,
      });
    }

    const tasks = manifest.steps.filter((s) => s.state_machine_task);
    const stateMachineRole = new iam.Role(this, 'StateMachineRole', {
      assumedBy: new iam.ServicePrincipal('states.amazonaws.com'),
      inlinePolicies: tasks.length > 0 ? {
        'amiflow-state-machine': new iam.PolicyDocument({
          statements: [new iam.PolicyStatement({
            sid: 'InvokeSteps',
            actions: ['lambda:InvokeFunction'],
            resources: tasks.map((s) => this.functions[s.name].functionArn),
          })],
        }),
      } : undefined,
    });
    const logGroup = new logs.LogGroup(this, 'StateMachineLogGroup', {
      logGroupName: `/aws/vendedlogs/states/${Stack.of(this).stackName}-amiflow`,
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
    });
    const substitutions: Record<string, string> = {};
    for (const s of tasks) substitutions[s.substitution] = this.functions[s.name].functionArn;
    const definitionFile = props.definitionFile ?? path.join(__dirname, '..', '..', '..', '..', 'statemachine', 'amiflow.asl.json');
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      // Inline, as SAM's DefinitionUri ends up: no asset bucket needed for the definition.
      definitionBody: sfn.DefinitionBody.fromString(fs.readFileSync(definitionFile, 'utf8')),
      definitionSubstitutions: substitutions,
      role: stateMachineRole,
      stateMachineType: sfn.StateMachineType.STANDARD,
      tracingEnabled: tracing,
      // Execution data stays out of the logs: the execution history already holds it.
      logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: false },
    });

    if (props.schedule) {
      new events.Rule(this, 'Schedule', {
        description: 'Starts an amiflow build on a schedule',
        schedule: props.schedule.schedule,
        targets: [new targets.SfnStateMachine(this.stateMachine, {
          input: events.RuleTargetInput.fromObject({ template_s3: props.schedule.templateS3, vars: props.schedule.vars ?? {} }),
        })],
      });
    }

    const janitor = this.functions[JANITOR];
    if (janitor) {
      new events.Rule(this, 'JanitorRule', {
        description: 'Sweeps the resources of amiflow builds that were aborted, timed out or failed',
        eventPattern: {
          source: ['aws.states'],
          detailType: ['Step Functions Execution Status Change'],
          detail: { status: ['ABORTED', 'TIMED_OUT', 'FAILED'], stateMachineArn: [this.stateMachine.stateMachineArn] },
        },
        targets: [new targets.LambdaFunction(janitor, { retryAttempts: 10, maxEventAge: Duration.hours(24) })],
      });
    }
  }
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
  }
}
